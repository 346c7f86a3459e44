//! Tera filters that write values into YAML safely: a reviewer-friendly literal block for
//! multi-line text, a JSON-quoted scalar for everything else.

use std::collections::HashMap;

use tera::{Result, Value};

/// `{{ value | yaml_str(indent=4) }}`: a YAML scalar that reads back as exactly `value`.
pub fn yaml_str(value: &Value, args: &HashMap<String, Value>) -> Result<Value> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => {
            return Err(tera::Error::msg(format!(
                "yaml_str expects text, got {other}"
            )))
        }
    };
    let indent = args.get("indent").and_then(Value::as_u64).unwrap_or(2) as usize;
    Ok(Value::String(yaml_scalar(&text, indent)))
}

/// A plain word when it cannot be mistaken for anything else, a literal block (`|`) when
/// the text spans lines and can be written as one, else a double-quoted JSON string.
pub fn yaml_scalar(text: &str, indent: usize) -> String {
    let body = text.trim_end_matches('\n');
    let trailing = text.len() - body.len();
    if is_plain_word(text) {
        text.to_string()
    } else if text.contains('\n') && trailing <= 1 && block_safe(text) {
        let chomp = if trailing == 0 { "-" } else { "" };
        let pad = " ".repeat(indent);
        let mut out = format!("|{chomp}");
        for line in body.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&pad);
                out.push_str(line);
            }
        }
        out
    } else {
        serde_json::to_string(text).expect("strings serialize")
    }
}

/// A word YAML (1.1 or 1.2) reads back as the same string: starts with a letter, no
/// indicators, not a boolean or null.
fn is_plain_word(text: &str) -> bool {
    const SPECIAL: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
        && !SPECIAL.contains(&text.to_ascii_lowercase().as_str())
}

/// Text a literal block reproduces exactly: no leading blank first line or leading space
/// (those need indentation indicators), no control characters but tab and newline, no
/// trailing spaces that editors strip.
fn block_safe(text: &str) -> bool {
    let first = text.split('\n').next().unwrap_or("");
    !first.is_empty()
        && !first.starts_with([' ', '\t'])
        && !text
            .chars()
            .any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{feff}')
        && !text.split('\n').any(|l| l.ends_with([' ', '\t']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) {
        let doc = format!("data:\n  k: {}\n", yaml_scalar(text, 4));
        let parsed: serde_yaml::Value =
            serde_yaml::from_str(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
        assert_eq!(parsed["data"]["k"].as_str(), Some(text), "{doc}");
    }

    #[test]
    fn every_text_reads_back_exactly() {
        for text in [
            "plain",
            "def handle(req):\n    return 'hi'\n",
            "no trailing newline\nsecond",
            "two trailing\n\n",
            "blank\n\nlines inside\n",
            "  leading space\nx\n",
            "\nleading newline\n",
            "trailing space \nx\n",
            "tab\tinside\n\tindented by tab\n",
            "quote: \"x\" and 'y' # not a comment\n",
            "- list-looking\n: colon\n",
            "cr\r\nlf\n",
            "",
            "@at",
            "yes",
            "0755",
            "Yes",
            "off",
            "random-quote",
            "app.kubernetes.io/name",
            "1e3",
            "100m",
            "~",
        ] {
            round_trip(text);
        }
    }

    #[test]
    fn multi_line_code_is_a_readable_block() {
        assert_eq!(yaml_scalar("a\nb\n", 4), "|\n    a\n    b");
        assert_eq!(yaml_scalar("a\n\nb", 2), "|-\n  a\n\n  b");
        assert_eq!(yaml_scalar("random-quote", 2), "random-quote");
        assert_eq!(yaml_scalar("true", 2), "\"true\"");
        assert_eq!(yaml_scalar("100m", 2), "\"100m\"");
    }
}
