//! Scaling decisions (seed 扩缩容): every `autoscale.interval` the
//! cluster's load score is compared with `scale_up_above` and
//! `scale_down_below`; a decision needs `sustain` evaluations in a row past
//! the same threshold (hysteresis), stays within `min_writers` and
//! `max_writers`, and none is taken within `cooldown` of the last action.
//! The [`Decider`] is pure (time comes in as an argument); the loop in
//! `lib.rs` reads the load and calls the actuator.

use broker_common::config::AutoscaleConfig;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    ScaleUp,
    ScaleDown,
    Hold,
}

/// One decision and why, as `autoscale status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Unix ms.
    pub at_ms: i64,
    pub action: Action,
    pub score: Option<f64>,
    pub writers: u32,
    pub reason: String,
    /// What the actuator said (the writer started or stopped, or its error).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub outcome: String,
}

#[derive(Debug, Default)]
pub struct Decider {
    above: u32,
    below: u32,
    last_action_ms: Option<i64>,
}

impl Decider {
    pub fn cooldown_until_ms(&self, config: &AutoscaleConfig) -> Option<i64> {
        self.last_action_ms
            .map(|t| t + config.cooldown.as_millis() as i64)
    }

    /// Decides at `now_ms` for `score` (None: no writer could be read) with
    /// `writers` in the ring.
    pub fn decide(
        &mut self,
        score: Option<f64>,
        writers: u32,
        config: &AutoscaleConfig,
        now_ms: i64,
    ) -> Decision {
        let d = |action, reason: String| Decision {
            at_ms: now_ms,
            action,
            score,
            writers,
            reason,
            outcome: String::new(),
        };
        let Some(s) = score else {
            self.above = 0;
            self.below = 0;
            return d(Action::Hold, "no writer's load could be read".into());
        };
        if s > config.scale_up_above {
            self.above += 1;
            self.below = 0;
        } else if s < config.scale_down_below {
            self.below += 1;
            self.above = 0;
        } else {
            self.above = 0;
            self.below = 0;
            return d(
                Action::Hold,
                format!(
                    "score {s:.1} is between {} and {}",
                    config.scale_down_below, config.scale_up_above
                ),
            );
        }
        if let Some(until) = self.cooldown_until_ms(config)
            && now_ms < until
        {
            return d(
                Action::Hold,
                format!(
                    "score {s:.1}, but cooling down for {} ms more",
                    until - now_ms
                ),
            );
        }
        if self.above > 0 {
            if writers >= config.max_writers {
                return d(
                    Action::Hold,
                    format!(
                        "score {s:.1} > {}, but already at max_writers {}",
                        config.scale_up_above, config.max_writers
                    ),
                );
            }
            if self.above < config.sustain {
                return d(
                    Action::Hold,
                    format!(
                        "score {s:.1} > {} for {} of {} evaluations",
                        config.scale_up_above, self.above, config.sustain
                    ),
                );
            }
            self.above = 0;
            self.last_action_ms = Some(now_ms);
            return d(
                Action::ScaleUp,
                format!(
                    "score {s:.1} > {} for {} evaluations",
                    config.scale_up_above, config.sustain
                ),
            );
        }
        if writers <= config.min_writers {
            return d(
                Action::Hold,
                format!(
                    "score {s:.1} < {}, but already at min_writers {}",
                    config.scale_down_below, config.min_writers
                ),
            );
        }
        if self.below < config.sustain {
            return d(
                Action::Hold,
                format!(
                    "score {s:.1} < {} for {} of {} evaluations",
                    config.scale_down_below, self.below, config.sustain
                ),
            );
        }
        self.below = 0;
        self.last_action_ms = Some(now_ms);
        d(
            Action::ScaleDown,
            format!(
                "score {s:.1} < {} for {} evaluations",
                config.scale_down_below, config.sustain
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hysteresis_bounds_and_cooldown() {
        let c = AutoscaleConfig {
            sustain: 2,
            cooldown: Duration::from_secs(60),
            min_writers: 1,
            max_writers: 3,
            ..Default::default()
        };
        let mut d = Decider::default();
        assert_eq!(d.decide(Some(90.0), 1, &c, 0).action, Action::Hold);
        // a dip between the thresholds resets the count
        assert_eq!(d.decide(Some(50.0), 1, &c, 1_000).action, Action::Hold);
        assert_eq!(d.decide(Some(90.0), 1, &c, 2_000).action, Action::Hold);
        let up = d.decide(Some(95.0), 1, &c, 3_000);
        assert_eq!(up.action, Action::ScaleUp, "{}", up.reason);
        // cooldown
        assert_eq!(d.decide(Some(95.0), 2, &c, 4_000).action, Action::Hold);
        assert!(
            d.decide(Some(95.0), 2, &c, 5_000)
                .reason
                .contains("cooling down")
        );
        // after it, at max: hold
        assert!(
            d.decide(Some(95.0), 3, &c, 70_000)
                .reason
                .contains("max_writers")
        );
        assert_eq!(d.decide(Some(10.0), 3, &c, 71_000).action, Action::Hold);
        assert_eq!(
            d.decide(Some(10.0), 3, &c, 72_000).action,
            Action::ScaleDown
        );
        // at min: hold however low
        let mut d = Decider::default();
        for t in 0..5 {
            assert_eq!(d.decide(Some(0.0), 1, &c, t).action, Action::Hold);
        }
        assert_eq!(d.decide(None, 2, &c, 10).action, Action::Hold);
    }
}
