//! Located problems in user-written YAML (file, line, column, key path, fix hint) and
//! their rustc-like rendering. Knows nothing of what the keys mean.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a source file, 1-based, with the length of the offending text on its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    pub line: usize,
    pub column: usize,
    pub len: usize,
}

/// A YAML file as read from disk, kept so that problems can quote their line.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path shown to the user: relative to the repo root where possible.
    pub display: PathBuf,
    pub text: String,
}

impl SourceFile {
    pub fn new(display: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self {
            display: display.into(),
            text: text.into(),
        }
    }

    fn line(&self, line: usize) -> Option<&str> {
        self.text.lines().nth(line.checked_sub(1)?)
    }
}

/// One problem: what is wrong, where, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub loc: Loc,
    /// Dotted key path such as `scale.min` or `triggers[0].http.path`; empty for the whole file.
    pub key_path: String,
    /// What is wrong and what was expected, in lowercase.
    pub message: String,
    pub hint: Option<String>,
    /// The source line quoted under the message.
    pub snippet: Option<String>,
}

impl Diagnostic {
    pub fn new(file: &SourceFile, loc: Loc, key_path: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.display.clone(),
            loc,
            key_path: key_path.to_string(),
            message: message.into(),
            hint: None,
            snippet: file.line(loc.line).map(str::to_string),
        }
    }

    /// A problem with a file as a whole (missing, unreadable, empty), not with a position in it.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            loc: Loc::default(),
            key_path: String::new(),
            message: message.into(),
            hint: None,
            snippet: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.file.display();
        let key = if self.key_path.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.key_path)
        };
        if self.loc.line == 0 {
            writeln!(f, "error: {path}: {key}{}", self.message)?;
        } else {
            writeln!(
                f,
                "error: {path}:{}:{}: {key}{}",
                self.loc.line, self.loc.column, self.message
            )?;
        }
        if let Some(snippet) = &self.snippet {
            let num = self.loc.line.to_string();
            let pad = " ".repeat(num.len());
            let caret_pad = " ".repeat(self.loc.column.saturating_sub(1));
            let carets = "^".repeat(self.loc.len.max(1));
            writeln!(f, "{pad} |")?;
            writeln!(f, "{num} | {snippet}")?;
            writeln!(f, "{pad} | {caret_pad}{carets}")?;
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "  = help: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in a repo, reported together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Sorted by file and position, so output is stable whatever order checks ran in.
    pub fn sorted(mut self) -> Self {
        self.0.sort_by(|a, b| {
            (&a.file, a.loc.line, a.loc.column, &a.message).cmp(&(
                &b.file,
                b.loc.line,
                b.loc.column,
                &b.message,
            ))
        });
        self
    }
}

impl Diagnostics {
    /// Every problem, then `N problems found; {consequence}`.
    pub fn report(&self, consequence: &str) -> String {
        let mut out = String::new();
        for diagnostic in &self.0 {
            out.push_str(&format!("{diagnostic}\n"));
        }
        let n = self.0.len();
        out.push_str(&format!(
            "{n} problem{} found; {consequence}",
            if n == 1 { "" } else { "s" }
        ));
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report("nothing was rendered or deployed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostic_quotes_the_line_with_carets_under_the_value() {
        let file = SourceFile::new("functions/q/function.yaml", "name: q\nscale:\n  min: two\n");
        let d = Diagnostic::new(
            &file,
            Loc {
                line: 3,
                column: 8,
                len: 3,
            },
            "scale.min",
            "expected a whole number, found \"two\"",
        )
        .with_hint("write a number, e.g. `min: 0`");
        let text = d.to_string();
        assert!(text.starts_with("error: functions/q/function.yaml:3:8: scale.min: expected"));
        assert!(text.contains("3 |   min: two\n"), "{text}");
        assert!(text.contains("  |        ^^^\n"), "{text}");
        assert!(text.contains("= help: write a number"), "{text}");
    }

    #[test]
    fn diagnostics_count_their_problems() {
        let file = SourceFile::new("a.yaml", "x: 1\n");
        let mut all = Diagnostics::default();
        all.push(Diagnostic::new(&file, Loc::default(), "x", "bad"));
        all.push(Diagnostic::new(&file, Loc::default(), "y", "bad"));
        assert!(all
            .to_string()
            .ends_with("2 problems found; nothing was rendered or deployed"));
    }
}
