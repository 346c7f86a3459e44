//! Schedule triggers on the local platform: fires each function's cron schedule (in UTC,
//! as a Kubernetes CronJob controller does) by calling the function through the gateway,
//! so the call is queued, scaled and counted like any other. On Kubernetes the rendered
//! CronJobs do this instead.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;

/// One schedule trigger, identified by function, position, expression and time zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScheduleKey {
    pub function: String,
    pub index: usize,
    pub cron: String,
    /// IANA name; UTC when None.
    pub timezone: Option<String>,
}

/// When each schedule fires next. Pure: the caller supplies the time.
#[derive(Debug, Default)]
pub struct Schedules {
    next: HashMap<ScheduleKey, DateTime<Utc>>,
}

/// The first time strictly after `after` that `cron` matches, read in UTC.
pub fn next_after(cron: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    next_after_in(cron, None, after)
}

/// The first time strictly after `after` that `cron` matches, read in the time zone `tz`
/// (an IANA name; UTC when None), as a CronJob with `timeZone` reads it.
pub fn next_after_in(cron: &str, tz: Option<&str>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = Cron::from_str(cron).ok()?;
    match tz {
        None => cron.find_next_occurrence(&after, false).ok(),
        Some(name) => {
            let zone: chrono_tz::Tz = name.parse().ok()?;
            let local = after.with_timezone(&zone);
            cron.find_next_occurrence(&local, false)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }
    }
}

impl Schedules {
    /// Brings the set in line with `current` (schedules of functions now loaded) and returns
    /// those due at `now`, each advanced to its next time. A schedule seen for the first time
    /// is not due at once: it waits for its next match, as a new CronJob does.
    pub fn due(
        &mut self,
        current: &[(ScheduleKey, String)],
        now: DateTime<Utc>,
    ) -> Vec<(ScheduleKey, String)> {
        self.next.retain(|k, _| current.iter().any(|(c, _)| c == k));
        let mut fire = Vec::new();
        for (key, body) in current {
            match self.next.get(key) {
                None => {
                    if let Some(t) = next_after_in(&key.cron, key.timezone.as_deref(), now) {
                        self.next.insert(key.clone(), t);
                    }
                }
                Some(t) if *t <= now => {
                    fire.push((key.clone(), body.clone()));
                    // Missed runs are not made up for (concurrencyPolicy Forbid, like the CronJob).
                    if let Some(t) = next_after_in(&key.cron, key.timezone.as_deref(), now) {
                        self.next.insert(key.clone(), t);
                    }
                }
                Some(_) => {}
            }
        }
        fire
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, h, m, s).unwrap()
    }

    fn key(cron: &str) -> ScheduleKey {
        ScheduleKey {
            function: "f".into(),
            index: 0,
            cron: cron.into(),
            timezone: None,
        }
    }

    #[test]
    fn a_time_zone_reads_the_expression_in_local_time() {
        // 09:00 in Paris on 26 November 2026 (CET, UTC+1) is 08:00 UTC.
        assert_eq!(
            next_after_in("0 9 * * *", Some("Europe/Paris"), at(7, 0, 0)),
            Some(at(8, 0, 0))
        );
        assert_eq!(
            next_after_in("0 9 * * *", None, at(7, 0, 0)),
            Some(at(9, 0, 0))
        );
        assert_eq!(
            next_after_in("0 9 * * *", Some("Nowhere/Else"), at(7, 0, 0)),
            None
        );
    }

    #[test]
    fn next_matches_follow_the_expression() {
        assert_eq!(next_after("*/5 * * * *", at(10, 3, 0)), Some(at(10, 5, 0)));
        assert_eq!(
            next_after("*/5 * * * *", at(10, 5, 0)),
            Some(at(10, 10, 0)),
            "strictly after"
        );
        assert_eq!(next_after("@hourly", at(10, 3, 0)), Some(at(11, 0, 0)));
    }

    #[test]
    fn a_schedule_fires_once_per_match_and_not_at_first_sight() {
        let mut s = Schedules::default();
        let current = vec![(key("*/5 * * * *"), "{}".to_string())];
        assert!(
            s.due(&current, at(10, 3, 0)).is_empty(),
            "new schedules wait for their next match"
        );
        assert!(s.due(&current, at(10, 4, 59)).is_empty());
        assert_eq!(s.due(&current, at(10, 5, 0)).len(), 1);
        assert!(s.due(&current, at(10, 5, 1)).is_empty(), "once per match");
        assert_eq!(s.due(&current, at(10, 10, 0)).len(), 1);
        // A removed function's schedule is forgotten.
        assert!(s.due(&[], at(10, 15, 0)).is_empty());
        assert!(s.next.is_empty());
    }
}
