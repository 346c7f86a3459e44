"""{{name}}: called once per request with req (method, path, query, headers, body)."""


def handle(req):
    name = req.query.get("name", "world")
    # Return text, bytes, anything JSON-able, or (status, headers, body).
    return {"hello": name, "method": req.method}
