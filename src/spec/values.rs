//! Checks for the small value languages inside function.yaml and cubeflash.yaml: DNS-1123
//! labels, durations, Kubernetes quantities, cron schedules, HTTP paths and methods, NATS
//! subjects, environment names and image references. Each returns a reason on failure;
//! locating the error is the caller's job.

use std::time::Duration;

use serde::Serialize;

/// A duration as written by the user ("30s") and as parsed; serializes as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dur {
    pub text: String,
    pub value: Duration,
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Dur::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Dur {
    pub fn parse(text: &str) -> Result<Self, String> {
        let value = parse_duration(text)?;
        Ok(Self {
            text: text.to_string(),
            value,
        })
    }

    /// Whole seconds, rounded up, for Kubernetes fields that count seconds.
    pub fn seconds_ceil(&self) -> u64 {
        let d = self.value;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}

/// Go-style durations, as Kubernetes users write them: `500ms`, `30s`, `5m`, `1h`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let reason = || {
        format!("{text:?} is not a duration: write a number and a unit (ms, s, m, h), e.g. 30s, 5m or 1h")
    };
    if text.is_empty() {
        return Err(reason());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(reason());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| reason())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(reason()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A DNS-1123 label: lowercase letters, digits and '-', starting and ending alphanumeric.
pub fn check_dns_label(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > max_len {
        return Err(format!(
            "{name:?} is {} characters long; at most {max_len} are allowed",
            name.len()
        ));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS-1123 label: use lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// The IANA time zone nearest to `name` (case and spelling), if one is near.
pub fn closest_time_zone(name: &str) -> Option<&'static str> {
    let names: Vec<&'static str> = chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()).collect();
    crate::spec::decode::closest(name, &names)
}

/// A suggestion for a name that is not a DNS-1123 label.
pub fn suggest_dns_label(name: &str) -> String {
    let mut out: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches('-').to_string()
}

/// A Kubernetes resource quantity such as `100m`, `0.5`, `128Mi`, `1G` or `1e3`.
pub fn check_quantity(text: &str) -> Result<(), String> {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(num_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || exponent_ok(suffix);
    if number_ok && suffix_ok && !text.starts_with('-') {
        return Ok(());
    }
    let hint = match suffix {
        "MB" | "mb" | "Mb" => format!(" (did you mean {number}Mi?)"),
        "GB" | "gb" | "Gb" => format!(" (did you mean {number}Gi?)"),
        "KB" | "kb" | "Kb" | "K" => format!(" (did you mean {number}Ki?)"),
        _ => String::new(),
    };
    Err(format!(
        "{text:?} is not a Kubernetes quantity{hint}: write a number with an optional suffix, e.g. 100m or 0.5 for CPU, 128Mi or 1Gi for memory"
    ))
}

/// A byte size written as a Kubernetes quantity without fractions: `6Mi`, `512Ki`, `1G`, `1000`.
pub fn quantity_bytes(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn exponent_ok(suffix: &str) -> bool {
    let Some(exp) = suffix.strip_prefix(['e', 'E']) else {
        return false;
    };
    let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A schedule as a Kubernetes CronJob accepts it: five fields or an @-macro, no seconds.
pub fn check_cron(expr: &str) -> Result<(), String> {
    let trimmed = expr.trim();
    let macros = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    let hint = "write five fields (minute hour day-of-month month day-of-week), e.g. \"*/5 * * * *\", six with seconds first (local platform only), e.g. \"*/10 * * * * *\", or @hourly, @daily, @weekly, @monthly";
    if trimmed.starts_with('@') {
        return if macros.contains(&trimmed) {
            Ok(())
        } else {
            Err(format!("{expr:?} is not a known cron macro: {hint}"))
        };
    }
    let fields = trimmed.split_whitespace().count();
    if fields != 5 && fields != 6 {
        return Err(format!(
            "{expr:?} has {fields} fields, a schedule has 5 (6 with seconds): {hint}"
        ));
    }
    if trimmed.contains(['L', 'W', '#', '?']) {
        return Err(format!(
            "{expr:?} uses L, W, # or ?, which Kubernetes CronJobs do not understand: {hint}"
        ));
    }
    let parser = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build();
    parser
        .parse(trimmed)
        .map(|_| ())
        .map_err(|e| format!("{expr:?} is not a valid cron schedule ({e}): {hint}"))
}

/// Whether a (valid) cron expression has a seconds field: six fields, seconds first.
pub fn cron_has_seconds(expr: &str) -> bool {
    expr.split_whitespace().count() == 6
}

/// Paths the gateway keeps for itself.
pub const RESERVED_PATH_PREFIXES: &[&str] = &[
    "/function/",
    "/async-function/",
    "/system/",
    "/metrics",
    "/healthz",
    "/ui",
    "/_/",
];

/// An HTTP trigger path: absolute, no query, no spaces, not reserved; may end in `/*` for
/// a prefix route.
pub fn check_http_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{path:?} does not start with \"/\": write it as \"/{path}\""
        ));
    }
    if path.contains(['?', '#', ' ', '\t']) {
        return Err(format!(
            "{path:?} contains a space, '?' or '#': a trigger path is a plain path"
        ));
    }
    if path.contains('*') && !(path.ends_with("/*") && path.matches('*').count() == 1) {
        return Err(format!(
            "{path:?} has '*' in the middle: only a trailing \"/*\" (prefix match) is supported"
        ));
    }
    let base = path.trim_end_matches('*');
    if let Some(p) = RESERVED_PATH_PREFIXES.iter().find(|p| {
        base == **p || base.starts_with(*p) || p.trim_end_matches('/') == base.trim_end_matches('/')
    }) {
        return Err(format!(
            "{path:?} is under {p}, which the gateway keeps for itself"
        ));
    }
    Ok(())
}

pub const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

pub fn check_method(method: &str) -> Result<(), String> {
    if HTTP_METHODS.contains(&method) {
        Ok(())
    } else if HTTP_METHODS.contains(&method.to_uppercase().as_str()) {
        Err(format!(
            "{method:?} must be upper case: write {}",
            method.to_uppercase()
        ))
    } else {
        Err(format!(
            "{method:?} is not an HTTP method: use one of {}",
            HTTP_METHODS.join(", ")
        ))
    }
}

/// A NATS subject: dot-separated tokens without spaces; `*` and a final `>` are wildcards.
pub fn check_subject(subject: &str) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    for (i, t) in tokens.iter().enumerate() {
        let bad = t.is_empty()
            || t.chars().any(char::is_whitespace)
            || (t.contains('>') && !(*t == ">" && i == last))
            || (t.contains('*') && *t != "*");
        if bad {
            return Err(format!(
                "{subject:?} is not a NATS subject: write dot-separated tokens without spaces, e.g. quotes.requested (wildcards: * for one token, a final > for the rest)"
            ));
        }
    }
    Ok(())
}

/// Variables that cubeflash sets itself.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if !valid {
        return Err(format!(
            "{name:?} is not a valid environment variable name: use letters, digits and '_', not starting with a digit"
        ));
    }
    if name == "PORT" || name.starts_with("CUBEFLASH_") {
        return Err(format!(
            "{name} is set by cubeflash itself and cannot be overridden"
        ));
    }
    Ok(())
}

/// An image reference with an explicit tag or digest, and not `latest`.
pub fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.contains(char::is_whitespace) {
        return Err(format!("{image:?} is not an image reference"));
    }
    if image.contains("@sha256:") {
        return Ok(());
    }
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    match last_segment.split_once(':') {
        None => Err(format!(
            "{image:?} has no tag: pin a version, e.g. {image}:1.2.3, so every deploy runs the same image"
        )),
        Some((_, "latest")) => Err(format!(
            "{image:?} uses the tag latest: pin a version so every deploy runs the same image"
        )),
        Some((_, "")) => Err(format!("{image:?} has an empty tag")),
        Some(_) => Ok(()),
    }
}

/// A duration as function.yaml writes them: `500ms`, `30s`, `2m`, `1h30m`.
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_go_style() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["30", "s", "30 s", "1.5s", "5min", "", "-1s", "1d"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(Dur::parse("1500ms").unwrap().seconds_ceil(), 2);
    }

    #[test]
    fn quantities_follow_kubernetes() {
        for ok in [
            "100m", "0.5", "1", "128Mi", "1Gi", "1G", "1e3", "2E-2", ".5",
        ] {
            assert!(check_quantity(ok).is_ok(), "{ok} should pass");
        }
        for bad in ["128MB", "1gb", "", "Mi", "1.2.3", "-1", "1 Gi", "."] {
            assert!(check_quantity(bad).is_err(), "{bad} should be refused");
        }
        assert!(check_quantity("128MB")
            .unwrap_err()
            .contains("did you mean 128Mi?"));
    }

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("random-quote", 40).is_ok());
        assert!(check_dns_label("Random_Quote", 40).is_err());
        assert!(check_dns_label("-x", 40).is_err());
        assert!(check_dns_label(&"a".repeat(41), 40).is_err());
        assert_eq!(suggest_dns_label("Random_Quote!"), "random-quote");
    }

    #[test]
    fn cron_is_what_a_cronjob_accepts_or_six_fields_with_seconds() {
        assert!(check_cron("*/5 * * * *").is_ok());
        assert!(check_cron("0 9 * * MON-FRI").is_ok());
        assert!(check_cron("@hourly").is_ok());
        assert!(check_cron("0 */5 * * * *").is_ok());
        assert!(cron_has_seconds("0 */5 * * * *") && !cron_has_seconds("*/5 * * * *"));
        assert!(check_cron("0 0 */5 * * * *").is_err());
        assert!(check_cron("61 * * * * *").is_err());
        assert!(check_cron("61 * * * *").is_err());
        assert!(check_cron("every minute").is_err());
        assert!(check_cron("0 0 L * *").is_err());
        assert!(check_cron("@sometimes").is_err());
    }

    #[test]
    fn http_paths() {
        assert!(check_http_path("/quote").is_ok());
        assert!(check_http_path("/api/*").is_ok());
        assert!(check_http_path("quote").unwrap_err().contains("\"/quote\""));
        assert!(check_http_path("/function/x").is_err());
        assert!(check_http_path("/metrics").is_err());
        assert!(check_http_path("/a/*/b").is_err());
        assert!(check_http_path("/a?b=1").is_err());
    }

    #[test]
    fn subjects_env_methods_images() {
        assert!(check_subject("quotes.requested").is_ok());
        assert!(check_subject("quotes.*").is_ok());
        assert!(check_subject("quotes.>").is_ok());
        assert!(check_subject("quotes..x").is_err());
        assert!(check_subject("a b").is_err());
        assert!(check_env_name("GREETING").is_ok());
        assert!(check_env_name("PORT").is_err());
        assert!(check_env_name("1X").is_err());
        assert!(check_method("GET").is_ok());
        assert!(check_method("get").unwrap_err().contains("upper case"));
        assert!(check_image("python:3.12-slim").is_ok());
        assert!(check_image("localhost:5000/x:1").is_ok());
        assert!(check_image("localhost:5000/x").is_err());
        assert!(check_image("python").is_err());
        assert!(check_image("python:latest").is_err());
        assert!(check_image("x@sha256:abc").is_ok());
    }
}
