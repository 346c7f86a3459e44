//! The `triggers:` list of a function.yaml: http, schedule and queue triggers, each
//! checked where it is written.

use marked_yaml::Node;

use super::{FunctionLocs, HttpTrigger, QueueTrigger, ScheduleTrigger, Trigger};
use crate::spec::decode::{node_loc, Reader};
use crate::spec::values;

pub(super) fn read_triggers(
    r: &mut Reader,
    node: &Node,
    locs: &mut FunctionLocs,
    function: &str,
) -> Vec<Trigger> {
    let hint = "write a list, e.g.\n  triggers:\n    - http: { path: /quote, methods: [GET] }";
    let Some(items) = r.sequence(node, "triggers", hint) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("triggers[{i}]");
        let Some(t) = r.mapping(item, &path, &["http", "schedule", "queue"]) else {
            continue;
        };
        let kinds: Vec<_> = t.entries().map(|(k, _)| k.as_str().to_string()).collect();
        if kinds.len() != 1 {
            r.error(item, &path, format!("a trigger has exactly one kind, found {}", kinds.len()), "write each trigger as its own list item: `- http: {...}`, `- schedule: {...}` or `- queue: {...}`");
            continue;
        }
        let trigger = if let Some(n) = t.get("http") {
            read_http(r, n, &t.path_of("http"), i, locs)
        } else if let Some(n) = t.get("schedule") {
            locs.schedules.push((i, node_loc(n)));
            read_schedule(r, n, &t.path_of("schedule"))
        } else if let Some(n) = t.get("queue") {
            locs.queues.push((i, node_loc(n)));
            read_queue(r, n, &t.path_of("queue"), function)
        } else {
            r.error(
                item,
                &path,
                "the trigger is empty",
                "fill it in, e.g. `- http: { path: /quote }`",
            );
            None
        };
        out.extend(trigger);
    }
    out
}

fn read_http(
    r: &mut Reader,
    node: &Node,
    path: &str,
    index: usize,
    locs: &mut FunctionLocs,
) -> Option<Trigger> {
    let f = r.mapping(node, path, &["path", "methods"])?;
    let p = r.required(&f, "path", "path: /quote")?;
    let loc = node_loc(p);
    let route = r.string(p, &f.path_of("path"), "")?;
    if let Err(why) = values::check_http_path(&route) {
        r.error(p, &f.path_of("path"), why, "");
    }
    let mut methods = Vec::new();
    if let Some(m) = f.get("methods") {
        let mpath = f.path_of("methods");
        for (i, item) in r
            .sequence(m, &mpath, "write e.g. `methods: [GET, POST]`")
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let ipath = format!("{mpath}[{i}]");
            if let Some(method) = r.string(item, &ipath, "") {
                match values::check_method(&method) {
                    Ok(()) if methods.contains(&method) => r.error(
                        item,
                        &ipath,
                        format!("{method} is listed twice"),
                        "list each method once",
                    ),
                    Ok(()) => methods.push(method),
                    Err(why) => r.error(item, &ipath, why, ""),
                }
            }
        }
    }
    locs.http_paths.push((index, loc));
    Some(Trigger::Http(HttpTrigger {
        path: route,
        methods,
    }))
}

fn read_schedule(r: &mut Reader, node: &Node, path: &str) -> Option<Trigger> {
    let f = r.mapping(node, path, &["cron", "body", "timezone", "catchUp"])?;
    let c = r.required(&f, "cron", "cron: \"*/5 * * * *\"")?;
    let cron = r.string(
        c,
        &f.path_of("cron"),
        "quote the schedule, e.g. cron: \"*/5 * * * *\"",
    )?;
    if let Err(why) = values::check_cron(&cron) {
        r.error(c, &f.path_of("cron"), why, "");
        return None;
    }
    let body = f
        .get("body")
        .and_then(|b| {
            r.scalar_text(
                b,
                &f.path_of("body"),
                "write the body as a string, e.g. body: '{\"kind\": \"tick\"}'",
            )
        })
        .unwrap_or_default();
    let timezone = f.get("timezone").and_then(|n| {
        let hint = "an IANA time zone name, e.g. Europe/Paris, America/New_York or UTC";
        let tz = r.string(n, &f.path_of("timezone"), hint)?;
        match tz.parse::<chrono_tz::Tz>() {
            Ok(_) => Some(tz),
            Err(_) => {
                let near = values::closest_time_zone(&tz)
                    .map(|z| format!(" (did you mean {z}?)"))
                    .unwrap_or_default();
                r.error(
                    n,
                    &f.path_of("timezone"),
                    format!("{tz:?} is not a time zone{near}"),
                    hint,
                );
                None
            }
        }
    });
    let catch_up = f
        .get("catchUp")
        .and_then(|n| r.bool(n, &f.path_of("catchUp")))
        .unwrap_or(false);
    Some(Trigger::Schedule(ScheduleTrigger {
        cron,
        body,
        timezone,
        catch_up,
    }))
}

fn read_queue(r: &mut Reader, node: &Node, path: &str, function: &str) -> Option<Trigger> {
    let f = r.mapping(
        node,
        path,
        &["subject", "stream", "durable", "concurrency", "ordered"],
    )?;
    let s = r.required(&f, "subject", "subject: quotes.requested")?;
    let subject = r.string(s, &f.path_of("subject"), "")?;
    if let Err(why) = values::check_subject(&subject) {
        r.error(s, &f.path_of("subject"), why, "");
        return None;
    }
    let name = |r: &mut Reader, key: &str, default: String| -> String {
        let Some(n) = f.get(key) else {
            return default;
        };
        let Some(text) = r.string(n, &f.path_of(key), "") else {
            return default;
        };
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            r.error(
                n,
                &f.path_of(key),
                format!("{text:?} is not a JetStream name"),
                "use letters, digits, '-' and '_' (no dots, spaces, * or >), at most 64",
            );
        }
        text
    };
    let stream = name(
        r,
        "stream",
        format!("CUBEFLASH_{}", function.replace('-', "_").to_uppercase()),
    );
    let durable = name(r, "durable", format!("cubeflash-{function}"));
    let ordered = f
        .get("ordered")
        .and_then(|n| r.bool(n, &f.path_of("ordered")))
        .unwrap_or(false);
    let concurrency = f
        .get("concurrency")
        .and_then(|n| r.uint(n, &f.path_of("concurrency"), 1, 10_000))
        .unwrap_or(if ordered { 1 } else { 10 });
    if ordered && concurrency != 1 {
        if let Some(n) = f.get("concurrency") {
            r.error(
                n,
                &f.path_of("concurrency"),
                format!("an ordered queue is handled one message at a time, not {concurrency}"),
                "drop concurrency, or ordered",
            );
        }
    }
    Some(Trigger::Queue(QueueTrigger {
        subject,
        stream,
        durable,
        concurrency,
        ordered,
    }))
}
