// hello: greets by name, from ?name= or a JSON body {"name": "..."}.
const GREETING = process.env.GREETING || "Hello";

exports.handle = async (req) => {
  let name = req.query.name;
  if (!name && req.body.length > 0) {
    let body;
    try {
      body = req.json();
    } catch (err) {
      return { statusCode: 400, body: { error: "the body is not JSON", function: "hello" } };
    }
    name = body && body.name;
  }
  return { message: `${GREETING}, ${name || "world"}!` };
};
