//! The dashboard's Bench runs page: the run folders under the repo's bench/results/, and
//! their reports. A report is a whole HTML page with its own styles, opened in a tab of its
//! own, where no Authorization header can follow; so an authorized request gets a link that
//! names a random ticket, good for LINK_LIFETIME and for that run's files only, served under a
//! policy that runs no script at all (`sandbox`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::api::BenchRun;

/// How long a report link works.
pub const LINK_LIFETIME: Duration = Duration::from_secs(600);
/// Links kept at once; the oldest goes first.
const MAX_TICKETS: usize = 256;
/// Runs listed, newest first.
const MAX_RUNS: usize = 200;
/// The policy reports are served under: their inline styles and nothing else.
pub const REPORT_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'none'";

/// Where runs are, in a repo.
pub fn results_dir(root: &Path) -> PathBuf {
    root.join("bench").join("results")
}

/// The open report links.
#[derive(Debug, Default)]
pub struct Tickets {
    open: Mutex<HashMap<String, (PathBuf, Instant)>>,
}

impl Tickets {
    /// A new ticket for `dir`'s files.
    pub fn issue(&self, dir: PathBuf) -> std::io::Result<String> {
        let ticket = super::tokens::random_token()?;
        let mut open = self.open.lock().expect("tickets lock");
        let now = Instant::now();
        open.retain(|_, (_, until)| *until > now);
        if open.len() >= MAX_TICKETS {
            if let Some(oldest) = open
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(t, _)| t.clone())
            {
                open.remove(&oldest);
            }
        }
        open.insert(ticket.clone(), (dir, now + LINK_LIFETIME));
        Ok(ticket)
    }

    /// The run folder a ticket opens, while it is good.
    pub fn dir(&self, ticket: &str) -> Option<PathBuf> {
        let open = self.open.lock().expect("tickets lock");
        open.get(ticket)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(dir, _)| dir.clone())
    }
}

/// A plain file or folder name: no separator, not `.` or `..`, not hidden.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

/// Every run folder, newest first (names are UTC times, so they sort by age).
pub fn list(root: &Path) -> Result<Vec<BenchRun>, String> {
    let results = results_dir(root);
    let entries = match std::fs::read_dir(&results) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", results.display())),
    };
    let latest = std::fs::read_link(results.join(crate::bench::output::LATEST))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut runs: Vec<BenchRun> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            plain(&name).then_some(name)
        })
        .map(|name| {
            let dir = results.join(&name);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| plain(n))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            let conclusion = std::fs::read_to_string(dir.join("conclusion.txt"))
                .map(|t| {
                    t.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            BenchRun {
                latest: latest.as_deref() == Some(name.as_str()),
                name,
                conclusion,
                files,
            }
        })
        .collect();
    runs.sort_by(|a, b| b.name.cmp(&a.name));
    runs.truncate(MAX_RUNS);
    Ok(runs)
}

/// The folder of run `name` (`latest` works), refused unless it is a folder directly
/// under bench/results/.
pub fn run_dir(root: &Path, name: &str) -> Result<PathBuf, String> {
    let results = results_dir(root);
    let missing = || format!("no bench run {name:?} in {}", results.display());
    if !plain(name) {
        return Err(missing());
    }
    let dir = results.join(name).canonicalize().map_err(|_| missing())?;
    let base = results.canonicalize().map_err(|_| missing())?;
    if dir.parent() != Some(base.as_path()) || !dir.is_dir() {
        return Err(missing());
    }
    Ok(dir)
}

/// One file of a run folder and its content type; None unless it is a plain file there.
pub fn read(dir: &Path, file: &str) -> Option<(Vec<u8>, &'static str)> {
    if !plain(file) {
        return None;
    }
    let path = dir.join(file);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let kind = match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("csv") => "text/csv; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "text/plain; charset=utf-8",
    };
    Some((std::fs::read(&path).ok()?, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_listed_newest_first_and_nothing_outside_them_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let results = results_dir(root);
        for (run, conclusion) in [
            ("20260101T000000Z", "old\n"),
            ("20261201T000000Z", "new one\n\nsecond\n"),
        ] {
            std::fs::create_dir_all(results.join(run)).unwrap();
            std::fs::write(results.join(run).join("conclusion.txt"), conclusion).unwrap();
            std::fs::write(results.join(run).join("index.html"), "<p>report</p>").unwrap();
        }
        std::os::unix::fs::symlink("20261201T000000Z", results.join("latest")).unwrap();
        std::fs::write(root.join("secret.txt"), "no").unwrap();
        std::os::unix::fs::symlink(
            root.join("secret.txt"),
            results.join("20261201T000000Z/leak.html"),
        )
        .unwrap();

        let runs = list(root).unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["20261201T000000Z", "20260101T000000Z"],
            "latest is a link, not a run"
        );
        assert!(runs[0].latest && !runs[1].latest);
        assert_eq!(runs[0].conclusion, ["new one", "second"]);
        assert_eq!(runs[0].files, ["conclusion.txt", "index.html"]);

        let dir = run_dir(root, "latest").unwrap();
        assert!(dir.ends_with("20261201T000000Z"));
        assert_eq!(
            read(&dir, "index.html").unwrap().1,
            "text/html; charset=utf-8"
        );
        for bad in [
            "..",
            "../secret.txt",
            "leak.html",
            ".hidden",
            "nope.html",
            "",
        ] {
            assert!(read(&dir, bad).is_none(), "{bad}");
        }
        for bad in ["..", "../..", "", "nope", ".."] {
            assert!(run_dir(root, bad).is_err(), "{bad}");
        }
        assert!(list(&root.join("elsewhere")).unwrap().is_empty());

        let tickets = Tickets::default();
        let t = tickets.issue(dir.clone()).unwrap();
        assert_eq!(tickets.dir(&t), Some(dir));
        assert_eq!(tickets.dir("guess"), None);
    }
}
