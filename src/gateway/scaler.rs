//! The autoscaler: a pure decision (how many replicas a function should have now) and the
//! tick both backends run for every function a few times a second (the local one on its
//! processes, the Kubernetes one through the scale subresource).

use std::time::Duration;

/// What the decision looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleInput {
    /// Requests in flight plus requests waiting for a replica.
    pub demand: u32,
    /// Replicas currently wanted.
    pub current: u32,
    pub min: u32,
    pub max: u32,
    pub concurrency: u32,
    /// Time since the last request arrived.
    pub since_request: Duration,
    pub idle: Duration,
    /// How long the wanted count has been below `current` without interruption.
    pub below_for: Duration,
    pub stable_window: Duration,
}

/// desired = ceil(demand / concurrency) within [min, max]; up at once; down only after the
/// stable window; to `min` (zero) after `idle` without requests.
pub fn decide(i: ScaleInput) -> u32 {
    let wanted = i
        .demand
        .div_ceil(i.concurrency.max(1))
        .clamp(i.min, i.max.max(i.min));
    if wanted >= i.current {
        return wanted;
    }
    if i.demand == 0 && i.since_request >= i.idle {
        return wanted;
    }
    // Hold at least one replica while requests are recent, even at zero demand.
    let floor = if i.since_request < i.idle {
        wanted.max(1).min(i.current)
    } else {
        wanted
    };
    if i.below_for >= i.stable_window {
        floor
    } else {
        i.current
    }
}

/// A function's scaling settings, as both backends read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
    pub concurrency: u32,
    pub idle: Duration,
}

/// One autoscaler tick for one function, on either backend: notes in `below_since` since
/// when the wanted count has been below `current`, and returns the replicas it should have.
pub fn tick(
    bounds: Bounds,
    current: u32,
    demand: u32,
    since_request: Duration,
    below_since: &std::sync::Mutex<Option<std::time::Instant>>,
) -> u32 {
    let wanted_now = demand
        .div_ceil(bounds.concurrency.max(1))
        .clamp(bounds.min, bounds.max.max(bounds.min));
    let below_for = {
        let mut below = below_since.lock().expect("below lock");
        if wanted_now < current {
            below.get_or_insert_with(std::time::Instant::now).elapsed()
        } else {
            *below = None;
            Duration::ZERO
        }
    };
    decide(ScaleInput {
        demand,
        current,
        min: bounds.min,
        max: bounds.max,
        concurrency: bounds.concurrency,
        since_request,
        idle: bounds.idle,
        below_for,
        stable_window: stable_window(bounds.idle),
    })
}

/// The stable window for scaling down (not to zero): Knative's 60s is long for small
/// functions; cubeflash uses the shorter of `idle` and 30s.
pub fn stable_window(idle: Duration) -> Duration {
    idle.min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ScaleInput {
        ScaleInput {
            demand: 0,
            current: 0,
            min: 0,
            max: 10,
            concurrency: 10,
            since_request: Duration::ZERO,
            idle: Duration::from_secs(60),
            below_for: Duration::ZERO,
            stable_window: Duration::from_secs(30),
        }
    }

    #[test]
    fn up_at_once_to_ceil_of_demand_over_concurrency() {
        assert_eq!(
            decide(ScaleInput {
                demand: 1,
                ..input()
            }),
            1
        );
        assert_eq!(
            decide(ScaleInput {
                demand: 25,
                current: 1,
                ..input()
            }),
            3
        );
        assert_eq!(
            decide(ScaleInput {
                demand: 500,
                current: 1,
                ..input()
            }),
            10
        );
        assert_eq!(
            decide(ScaleInput {
                demand: 0,
                min: 2,
                ..input()
            }),
            2
        );
    }

    #[test]
    fn down_only_after_the_stable_window() {
        let busy = ScaleInput {
            demand: 5,
            current: 3,
            ..input()
        };
        assert_eq!(decide(busy), 3);
        assert_eq!(
            decide(ScaleInput {
                below_for: Duration::from_secs(31),
                ..busy
            }),
            1
        );
    }

    #[test]
    fn to_zero_only_after_idle_without_requests() {
        let quiet = ScaleInput {
            current: 2,
            since_request: Duration::from_secs(10),
            below_for: Duration::from_secs(40),
            ..input()
        };
        assert_eq!(decide(quiet), 1, "recent traffic keeps one replica");
        assert_eq!(
            decide(ScaleInput {
                since_request: Duration::from_secs(61),
                ..quiet
            }),
            0
        );
        assert_eq!(
            decide(ScaleInput {
                since_request: Duration::from_secs(61),
                min: 1,
                ..quiet
            }),
            1
        );
    }
}
