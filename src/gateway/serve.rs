//! The listener side of the gateway: one single-threaded runtime per core accepting on a
//! shared socket, graceful shutdown, and the background loops (autoscaler, schedules) that
//! run beside the serving threads. What a request does is in `gateway.rs` and `dispatch`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::metrics::KindLabels;
use super::{Gateway, AUTOSCALE_EVERY};

impl Gateway {
    /// Serves on `listener` until `shutdown` resolves, then drains in-flight requests
    /// (bounded by `grace`) and stops every replica.
    ///
    /// Requests are served by one single-threaded runtime per core, each accepting on the
    /// same socket (the nginx model): a connection and the replica connections it uses stay
    /// on one thread, with no work stealing and no cross-thread wake-ups on the hot path.
    /// `CUBEFLASH_WORKERS` sets their number.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        *self.local_addr.write().expect("addr lock") = listener.local_addr().ok();
        for f in self.routes().functions() {
            f.start();
        }
        self.runtimes.warm(
            self.routes()
                .functions()
                .iter()
                .map(|f| f.function.spec.runtime),
        );
        let scaler = tokio::spawn(autoscale_loop(self.clone()));
        let scheduler = tokio::spawn(schedule_loop(self.clone()));
        let workers = std::env::var("CUBEFLASH_WORKERS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let std_listener = listener.into_std().expect("a bound listener converts");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut threads = Vec::new();
        for i in 0..workers {
            let listener = std_listener
                .try_clone()
                .expect("the listening socket can be shared");
            let gateway = self.clone();
            let stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("cubeflash-http-{i}"))
                .spawn(move || gateway.serve_worker(listener, stopped))
                .expect("worker threads start");
            threads.push(thread);
        }
        drop(std_listener);
        shutdown.await;
        let _ = stop.send(true);
        for t in threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        scaler.abort();
        scheduler.abort();
        self.runtimes.shutdown();
        let functions = self.routes().functions();
        let stops = functions.iter().map(|f| f.shutdown());
        futures_join_all(stops).await;
    }

    /// One serving thread: accepts and serves connections until told to stop, then lets
    /// in-flight requests finish (bounded by `grace`).
    fn serve_worker(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a worker runtime starts");
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("a non-blocking listener");
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, client)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let gateway = self.clone();
                        let service = service_fn(move |req| {
                            let gateway = gateway.clone();
                            async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, client).await) }
                        });
                        let conn = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(30))
                            .serve_connection(TokioIo::new(stream), service);
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                    _ = stopped.changed() => break,
                }
            }
            drop(listener);
            let _ = tokio::time::timeout(self.config.grace, graceful.shutdown()).await;
        });
    }
}

/// Awaits every future (a tiny join_all, to avoid a dependency for one call).
async fn futures_join_all<F: Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let handles: Vec<_> = futures.collect();
    for f in handles {
        f.await;
    }
}

async fn autoscale_loop(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(AUTOSCALE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        let now = Instant::now();
        let dt = (now - last).as_secs_f64();
        last = now;
        let functions = gateway.routes().functions();
        // About once a second: close pooled connections to replicas that have stopped.
        if ticks.is_multiple_of(10) {
            let live: std::collections::HashSet<std::net::SocketAddr> = functions
                .iter()
                .flat_map(|f| f.serverless.ready())
                .map(|e| e.addr)
                .collect();
            gateway.upstreams.retain_live(|addr| live.contains(addr));
        }
        for f in functions {
            f.autoscale();
            let held = [
                ("serverless", f.serverless.running()),
                ("baseline", f.baseline.as_ref().map_or(0, |b| b.running())),
            ];
            for (kind, n) in held.into_iter().filter(|(_, n)| *n > 0) {
                let labels = KindLabels {
                    function: f.name().to_string(),
                    kind,
                };
                gateway
                    .metrics
                    .replica_seconds
                    .get_or_create(&labels)
                    .inc_by(f64::from(n) * dt);
            }
        }
    }
}

/// Fires schedule triggers: once a second, calls every due function through the gateway
/// itself, and notes the call in the function's log.
async fn schedule_loop(gateway: Arc<Gateway>) {
    use crate::triggers::schedule::{ScheduleKey, Schedules};
    let client = reqwest::Client::new();
    let mut schedules = Schedules::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let routes = gateway.routes();
        let current: Vec<(ScheduleKey, String)> = routes
            .functions()
            .iter()
            .flat_map(|f| {
                let name = f.name().to_string();
                f.function
                    .spec
                    .schedule_triggers()
                    .enumerate()
                    .map(move |(index, t)| {
                        (
                            ScheduleKey {
                                function: name.clone(),
                                index,
                                cron: t.cron.clone(),
                            },
                            t.body.clone(),
                        )
                    })
            })
            .collect();
        for (key, body) in schedules.due(&current, chrono::Utc::now()) {
            let Some(f) = routes.by_name.get(&key.function).cloned() else {
                continue;
            };
            let request = client
                .post(format!("{}/function/{}", gateway.url(), key.function))
                .header("X-Cubeflash-Trigger", "schedule")
                .body(body);
            tokio::spawn(async move {
                let outcome = match request.send().await {
                    Ok(resp) => resp.status().to_string(),
                    Err(e) => format!("failed: {e}"),
                };
                f.logs.push(format!(
                    "[{}] cubeflash: schedule {} ({}) fired: {outcome}",
                    key.function,
                    key.index + 1,
                    key.cron
                ));
            });
        }
    }
}
