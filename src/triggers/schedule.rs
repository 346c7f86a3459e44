//! Schedule triggers on the local platform: fires each function's cron schedule (in UTC or
//! its `timezone`, as a Kubernetes CronJob controller does; an optional sixth field, first,
//! for seconds) by calling the function through the gateway, so the call is queued, scaled
//! and counted like any other. Runs missed while the gateway was down are not made up for,
//! unless the schedule says `catchUp: true`: then it fires once at start for all it missed
//! (the last firing of each such schedule is kept in `.cubeflash/schedules.json`). On Kubernetes
//! the rendered CronJobs do this instead.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Timelike, Utc};
use croner::Cron;

/// One schedule trigger, identified by function, position, expression and time zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScheduleKey {
    pub function: String,
    pub index: usize,
    pub cron: String,
    /// IANA name; UTC when None.
    pub timezone: Option<String>,
    pub catch_up: bool,
}

impl ScheduleKey {
    /// How the schedule's last firing is found again after a restart.
    pub fn id(&self) -> String {
        format!(
            "{}#{} {} {}",
            self.function,
            self.index + 1,
            self.cron,
            self.timezone.as_deref().unwrap_or("UTC")
        )
    }
}

/// A schedule due now, and how many of its runs were missed (more than one only when it
/// catches up after a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    pub key: ScheduleKey,
    pub body: String,
    pub runs: u64,
    /// Fired at start for runs missed while the gateway was down.
    pub caught_up: bool,
    /// The time it was due (for a catch-up: the last run missed).
    pub due_at: DateTime<Utc>,
}

/// Missed runs counted, at most.
const MISSED_CAP: u64 = 100_000;

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
    // From the whole second: croner keeps the fraction of `after` in what it finds.
    let after = after.with_nanosecond(0)?;
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
    /// is not due at once: it waits for its next match, as a new CronJob does — unless it
    /// catches up and `last` (its last firing before a restart) shows runs missed since.
    pub fn due(
        &mut self,
        current: &[(ScheduleKey, String)],
        now: DateTime<Utc>,
        last: &HashMap<String, DateTime<Utc>>,
    ) -> Vec<Firing> {
        self.next.retain(|k, _| current.iter().any(|(c, _)| c == k));
        let mut fire = Vec::new();
        for (key, body) in current {
            let tz = key.timezone.as_deref();
            match self.next.get(key) {
                None => {
                    if let Some(before) = last.get(&key.id()).filter(|_| key.catch_up) {
                        let mut runs = 0;
                        let mut t = *before;
                        let mut last_missed = *before;
                        while let Some(n) = next_after_in(&key.cron, tz, t).filter(|n| *n <= now) {
                            runs += 1;
                            t = n;
                            last_missed = n;
                            if runs >= MISSED_CAP {
                                break;
                            }
                        }
                        if runs > 0 {
                            fire.push(Firing {
                                key: key.clone(),
                                body: body.clone(),
                                runs,
                                caught_up: true,
                                due_at: last_missed,
                            });
                        }
                    }
                    if let Some(t) = next_after_in(&key.cron, tz, now) {
                        self.next.insert(key.clone(), t);
                    }
                }
                Some(t) if *t <= now => {
                    fire.push(Firing {
                        key: key.clone(),
                        body: body.clone(),
                        runs: 1,
                        caught_up: false,
                        due_at: *t,
                    });
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

    /// When the next schedule falls due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.next.values().min().copied()
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
            catch_up: false,
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
        let none = HashMap::new();
        assert!(
            s.due(&current, at(10, 3, 0), &none).is_empty(),
            "new schedules wait for their next match"
        );
        assert_eq!(s.next_due(), Some(at(10, 5, 0)));
        assert!(s.due(&current, at(10, 4, 59), &none).is_empty());
        assert_eq!(s.due(&current, at(10, 5, 0), &none).len(), 1);
        assert!(
            s.due(&current, at(10, 5, 1), &none).is_empty(),
            "once per match"
        );
        assert_eq!(s.due(&current, at(10, 10, 0), &none).len(), 1);
        // A removed function's schedule is forgotten.
        assert!(s.due(&[], at(10, 15, 0), &none).is_empty());
        assert!(s.next.is_empty());
    }

    #[test]
    fn seconds_come_first_in_a_six_field_expression() {
        let late = at(10, 3, 4) + chrono::Duration::milliseconds(634);
        assert_eq!(
            next_after("*/2 * * * * *", late),
            Some(at(10, 3, 6)),
            "on the second, whatever the fraction of the time it starts from"
        );
        assert_eq!(
            next_after("*/10 * * * * *", at(10, 3, 4)),
            Some(at(10, 3, 10))
        );
        assert_eq!(next_after("30 0 9 * * *", at(8, 0, 0)), Some(at(9, 0, 30)));
    }

    #[test]
    fn missed_runs_are_made_up_for_once_and_only_with_catch_up() {
        let mut plain = key("*/5 * * * *");
        let last: HashMap<String, DateTime<Utc>> = [(plain.id(), at(9, 50, 0))].into();
        let mut s = Schedules::default();
        assert!(
            s.due(&[(plain.clone(), "{}".into())], at(10, 3, 0), &last)
                .is_empty(),
            "without catchUp, missed runs are not replayed"
        );
        plain.catch_up = true;
        let mut s = Schedules::default();
        let fired = s.due(&[(plain.clone(), "{}".into())], at(10, 3, 0), &last);
        assert_eq!(fired.len(), 1, "one firing for all it missed");
        assert_eq!(fired[0].runs, 2, "09:55 and 10:00 were missed");
        assert!(s
            .due(&[(plain, "{}".into())], at(10, 3, 1), &last)
            .is_empty());
        // Nothing missed: nothing to make up for.
        let mut fresh = key("*/5 * * * *");
        fresh.catch_up = true;
        let last: HashMap<String, DateTime<Utc>> = [(fresh.id(), at(10, 0, 0))].into();
        assert!(Schedules::default()
            .due(&[(fresh, "{}".into())], at(10, 3, 0), &last)
            .is_empty());
    }
}
