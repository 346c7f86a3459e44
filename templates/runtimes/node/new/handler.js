// {{name}}: called once per request with req (method, path, query, headers, body).
// Return a string, a Buffer, anything JSON-able, or { statusCode, headers, body }.
exports.handle = async (req) => {
  const name = req.query.name || "world";
  return { hello: name, method: req.method };
};
