//! Queue triggers against a real nats-server with JetStream (started by the test on a free
//! loopback port): messages invoke the function through the gateway, acked only after a 2xx,
//! retried, dead-lettered once, in order when asked.

mod common;

use std::time::{Duration, Instant};

use common::gateway::TestGateway;
use common::{need, repo_root, temp_tree, NatsServer};
use serde_json::Value;

fn repo(nats: &str, trigger: &str, extra: &str) -> tempfile::TempDir {
    let handler =
        std::fs::read_to_string(repo_root().join("tests/fixtures/async/queue.py")).unwrap();
    let project = format!("namespace: test\nnats: {{ url: \"{nats}\" }}\n");
    let yaml = format!(
        "name: job\nruntime: python\nhandler: handler.py\ntriggers:\n  - queue: {trigger}\nasync: {{ retries: 3, minBackoff: 100ms, maxBackoff: 200ms }}\n{extra}"
    );
    temp_tree(&[
        ("cubeflash.yaml", project.as_str()),
        ("functions/job/function.yaml", yaml.as_str()),
        ("functions/job/handler.py", handler.as_str()),
    ])
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Publishes `bodies` to `subject`, each acknowledged by the stream (which must exist).
fn publish(url: &str, subject: &str, bodies: &[String]) {
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        for b in bodies {
            js.publish(subject.to_string(), b.clone().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
}

/// Messages now in `stream`; 0 while it does not exist yet (the dead-letter stream is
/// made at the first dead letter, so a wait may ask before it is there).
fn stream_len(url: &str, stream: &str) -> u64 {
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.unwrap().state.messages,
            Err(e) if e.to_string().contains("stream not found") => 0,
            Err(e) => panic!("stream {stream}: {e}"),
        }
    })
}

/// Waits until the gateway has made the stream (its consumer is up).
fn wait_for_stream(url: &str, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = rt().block_on(async {
            let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
            js.get_stream(stream).await.is_ok()
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never created {stream}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first message of the dead-letter stream CUBEFLASH_JOB_DEAD.
fn first_dead_letter(url: &str) -> async_nats::jetstream::message::StreamMessage {
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let s = js.get_stream("CUBEFLASH_JOB_DEAD").await.unwrap();
        s.get_raw_message(1).await.unwrap()
    })
}

fn done(gw: &TestGateway) -> Vec<Value> {
    let v: Value = common::gateway::client()
        .get(gw.url("/function/job/done"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["done"].as_array().unwrap().clone()
}

fn wait_until(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn messages_wake_a_function_at_zero_and_are_acked_after_a_2xx() {
    need("python3");
    let nats = NatsServer::start();
    let gw = TestGateway::serve(repo(
        &nats.url,
        "{ subject: jobs.new, concurrency: 8 }",
        "scale: { max: 1, idle: 2s }\n",
    ));
    wait_for_stream(&nats.url, "CUBEFLASH_JOB");
    assert_eq!(
        gw.function("job")["replicas"]["desired"],
        0,
        "at zero before any message"
    );
    let bodies: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    publish(&nats.url, "jobs.new", &bodies);
    wait_until("the work queue drained", 60, || {
        stream_len(&nats.url, "CUBEFLASH_JOB") == 0
    });
    let seen = done(&gw);
    let mut got: Vec<&str> = seen.iter().map(|d| d["body"].as_str().unwrap()).collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 1000, "every message handled");
    assert_eq!(seen[0]["subject"], "jobs.new");
    assert!(gw.function("job")["coldStarts"].as_u64().unwrap() >= 1);
    let queues = gw.function("job")["queues"].clone();
    assert_eq!(queues[0]["subject"], "jobs.new", "{queues}");
    assert_eq!(queues[0]["state"], "consuming", "{queues}");
    let metrics = gw.metrics();
    let delivered = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "cubeflash_queue_delivered_total{function=\"job\",stream=\"CUBEFLASH_JOB\"} ",
            )
        })
        .and_then(|n| n.parse::<u64>().ok());
    assert!(delivered.is_some_and(|n| n >= 1000), "{metrics}");
    assert!(
        metrics.contains("cubeflash_queue_connected{function=\"job\",stream=\"CUBEFLASH_JOB\"} 1"),
        "{metrics}"
    );
    wait_until("back to zero after idle", 20, || {
        gw.function("job")["replicas"]["desired"] == 0
    });
}

#[test]
fn a_poison_message_is_dead_lettered_once_and_leaves_the_queue() {
    need("python3");
    let nats = NatsServer::start();
    let gw = TestGateway::serve(repo(&nats.url, "{ subject: jobs.poison }", ""));
    wait_for_stream(&nats.url, "CUBEFLASH_JOB");
    publish(
        &nats.url,
        "jobs.poison",
        &["poison-1".to_string(), "fine".to_string()],
    );
    wait_until("dead-lettered", 30, || {
        stream_len(&nats.url, "CUBEFLASH_JOB_DEAD") == 1
    });
    wait_until("the source emptied", 10, || {
        stream_len(&nats.url, "CUBEFLASH_JOB") == 0
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        stream_len(&nats.url, "CUBEFLASH_JOB_DEAD"),
        1,
        "exactly once"
    );
    let dead = first_dead_letter(&nats.url);
    assert_eq!(dead.payload.as_ref(), b"poison-1");
    let headers = dead.headers;
    assert_eq!(
        headers.get("Cubeflash-Deliveries").map(|v| v.as_str()),
        Some("4"),
        "1 + async.retries"
    );
    assert!(headers
        .get("Cubeflash-Reason")
        .unwrap()
        .as_str()
        .contains("500"));
    assert_eq!(done(&gw).len(), 1, "the good message went through");
    let metrics = gw.metrics();
    assert!(
        metrics.contains("cubeflash_queue_dead_total{function=\"job\",stream=\"CUBEFLASH_JOB\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("cubeflash_queue_retried_total{function=\"job\",stream=\"CUBEFLASH_JOB\"} 3"),
        "{metrics}"
    );
}

#[test]
fn an_ordered_queue_keeps_order_when_a_message_fails_twice() {
    need("python3");
    let nats = NatsServer::start();
    let gw = TestGateway::serve(repo(
        &nats.url,
        "{ subject: jobs.ordered, ordered: true }",
        "",
    ));
    wait_for_stream(&nats.url, "CUBEFLASH_JOB");
    let bodies: Vec<String> = (1..=10)
        .map(|i| {
            if i == 7 {
                "flaky-7".to_string()
            } else {
                format!("m{i}")
            }
        })
        .collect();
    publish(&nats.url, "jobs.ordered", &bodies);
    wait_until("all ten handled", 60, || done(&gw).len() >= 10);
    let order: Vec<String> = done(&gw)
        .iter()
        .map(|d| d["body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        order, bodies,
        "in stream order, the flaky one retried in place"
    );
    let seven = &done(&gw)[6];
    assert_eq!(seven["delivery"], "3");
}

#[test]
fn a_nats_server_that_was_killed_is_reconnected_to_and_nothing_stored_is_lost() {
    need("python3");
    let nats = NatsServer::start();
    let (url, port) = (nats.url.clone(), nats.port);
    let gw = TestGateway::serve(repo(&url, "{ subject: jobs.k }", ""));
    wait_for_stream(&url, "CUBEFLASH_JOB");
    publish(&url, "jobs.k", &["before".to_string()]);
    wait_until("the first message handled", 30, || done(&gw).len() == 1);
    // SIGKILL the server; start it again on the same port and store.
    let store = nats.kill();
    wait_until("the trigger says it is disconnected", 20, || {
        gw.function("job")["queues"][0]["state"] == "disconnected"
    });
    let again = NatsServer::start_on(port, store);
    let bodies: Vec<String> = (0..20).map(|i| format!("after-{i}")).collect();
    publish(&again.url, "jobs.k", &bodies);
    wait_until(
        "the consumer came back and drained what was stored",
        60,
        || {
            let mut bodies: Vec<String> = done(&gw)
                .iter()
                .map(|d| d["body"].as_str().unwrap_or_default().to_string())
                .collect();
            bodies.sort();
            bodies.dedup();
            bodies.len() == 21
        },
    );
    // Handled is not yet acked: the last ack may still be on its way, or lost in the
    // reconnect, and then the message comes again after the ack wait (30 s): at least once.
    wait_until("every message acked out of the work queue", 45, || {
        stream_len(&again.url, "CUBEFLASH_JOB") == 0
    });
}

#[test]
fn a_message_over_the_body_limit_is_dead_lettered_at_once_and_says_why() {
    need("python3");
    let nats = NatsServer::start();
    let root = repo(&nats.url, "{ subject: jobs.big }", "");
    let project = format!(
        "namespace: test\nnats: {{ url: \"{}\" }}\ngateway: {{ maxBodySize: 1Ki }}\n",
        nats.url
    );
    std::fs::write(root.path().join("cubeflash.yaml"), project).unwrap();
    let gw = TestGateway::serve(root);
    wait_for_stream(&nats.url, "CUBEFLASH_JOB");
    publish(
        &nats.url,
        "jobs.big",
        &["x".repeat(2048), "small".to_string()],
    );
    wait_until("dead-lettered", 30, || {
        stream_len(&nats.url, "CUBEFLASH_JOB_DEAD") == 1
    });
    let dead = first_dead_letter(&nats.url);
    let reason = dead.headers.get("Cubeflash-Reason").unwrap().to_string();
    assert!(reason.contains("over gateway.maxBodySize"), "{reason}");
    assert_eq!(
        dead.headers.get("Cubeflash-Deliveries").map(|v| v.as_str()),
        Some("1"),
        "not retried: no delivery changes its size"
    );
    wait_until("the small one went through", 20, || done(&gw).len() == 1);
}
