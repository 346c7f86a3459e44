"""random-quote: a random quote as JSON, or as a small HTML page for browsers.

GET /quote                  -> {"quote": "...", "author": "..."}
GET /quote?seed=3           -> the same quote every time for the same seed
GET /quote (Accept: text/html) -> the "Random Quote Generator" page of the seed report
"""

import html
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, os.environ.get("QUOTES_FILE", "quotes.json")), encoding="utf-8") as f:
    QUOTES = json.load(f)

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Random Quote Generator</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:4em auto;text-align:center}}
blockquote{{font-size:1.4em}}</style></head>
<body>
<h1>Random Quote Generator</h1>
<blockquote><strong>{quote}</strong> &ndash; {author}</blockquote>
<form method="get"><button type="submit">Generate Random Quote</button></form>
</body>
</html>
"""


def handle(req):
    seed = req.query.get("seed")
    if seed is not None:
        if not seed.lstrip("-").isdigit():
            return 400, {"error": "seed must be a whole number", "function": "random-quote"}
        quote = QUOTES[int(seed) % len(QUOTES)]
    else:
        quote = random.choice(QUOTES)
    if "text/html" in req.headers.get("accept", ""):
        page = PAGE.format(quote=html.escape(quote["quote"]), author=html.escape(quote["author"]))
        return 200, {"Content-Type": "text/html; charset=utf-8"}, page
    return quote
