//! The decision step: what a disposition means under a retry policy, as pure
//! functions of the policy, the attempts made and the disposition. The
//! executor carries the result out; nothing here touches the broker.

use std::time::Duration;

use super::disposition::{Disposition, FailureKind};
use super::policy::RetryPolicy;
use super::settle::Decision;

/// What the executor does with a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Tell the broker at once.
    Settle(Decision),
    /// Republish to the delay queue for `delay` with `retries` delayed
    /// retries counted, then ack.
    Delay {
        delay: Duration,
        retries: u32,
        reason: String,
    },
    /// Republish to the error exchange, then ack.
    DeadLetter { reason: String, kind: FailureKind },
}

/// Whether to run the handler again in-process, and after what pause:
/// only for a retry on the policy's schedule while immediate retries are
/// left. `made` counts the immediate retries already made.
pub(crate) fn run_again(
    policy: &RetryPolicy,
    made: u32,
    disposition: &Disposition,
) -> Option<Duration> {
    match disposition {
        Disposition::Retry { after: None, .. } if made < policy.immediate => {
            Some(policy.immediate_pause(made))
        }
        _ => None,
    }
}

/// The plan for a final disposition. `retries` counts the delayed retries
/// this message already had.
pub(crate) fn plan(policy: &RetryPolicy, retries: u32, disposition: Disposition) -> Plan {
    match disposition {
        Disposition::Ack => Plan::Settle(Decision::Ack),
        Disposition::Requeue => Plan::Settle(Decision::Requeue),
        Disposition::DeadLetter { reason, kind } => Plan::DeadLetter { reason, kind },
        Disposition::Retry { after, reason } => {
            let next = retries.saturating_add(1);
            match (policy.delay(next), after) {
                (Some(_), Some(asked)) => Plan::Delay {
                    delay: delay_step(asked),
                    retries: next,
                    reason,
                },
                (Some(scheduled), None) => Plan::Delay {
                    delay: scheduled,
                    retries: next,
                    reason,
                },
                (None, _) => Plan::DeadLetter {
                    reason,
                    kind: FailureKind::Retryable,
                },
            }
        }
    }
}

/// The longest delay a handler can ask for.
pub(crate) const MAX_ASKED_DELAY: Duration = Duration::from_secs(24 * 3600);

/// A delay a handler asked for, rounded *up* to a step of a fixed ladder
/// (whole seconds to 10 s, tens of seconds to 100 s, minutes to an hour,
/// then hours, at most a day): never early, and at most about a hundred
/// distinct delay queues however the handler computes its delays.
pub(crate) fn delay_step(asked: Duration) -> Duration {
    let asked = asked.min(MAX_ASKED_DELAY);
    let ms = asked.as_millis();
    let step: u128 = match ms {
        0..=10_000 => 1_000,
        10_001..=100_000 => 10_000,
        100_001..=3_600_000 => 60_000,
        _ => 3_600_000,
    };
    let rounded = ms.div_ceil(step).max(1) * step;
    Duration::from_millis(u64::try_from(rounded).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
            .immediate(2)
            .delays([Duration::from_secs(1), Duration::from_secs(10)])
    }

    #[test]
    fn a_scheduled_retry_runs_in_process_first_then_waits_in_delay_queues_then_dead_letters() {
        let p = policy();
        let retry = Disposition::retry("flaky");
        assert_eq!(run_again(&p, 0, &retry), Some(Duration::from_millis(100)));
        assert_eq!(run_again(&p, 1, &retry), Some(Duration::from_millis(200)));
        assert_eq!(run_again(&p, 2, &retry), None);
        assert_eq!(
            plan(&p, 0, retry.clone()),
            Plan::Delay {
                delay: Duration::from_secs(1),
                retries: 1,
                reason: "flaky".into()
            }
        );
        assert_eq!(
            plan(&p, 1, retry.clone()),
            Plan::Delay {
                delay: Duration::from_secs(10),
                retries: 2,
                reason: "flaky".into()
            }
        );
        assert_eq!(
            plan(&p, 2, retry),
            Plan::DeadLetter {
                reason: "flaky".into(),
                kind: FailureKind::Retryable
            }
        );
    }

    #[test]
    fn an_asked_delay_skips_in_process_retries_and_still_uses_up_the_schedule() {
        let p = policy();
        let asked = Disposition::retry_after(Duration::from_millis(2400), "busy");
        assert_eq!(run_again(&p, 0, &asked), None);
        assert_eq!(
            plan(&p, 0, asked.clone()),
            Plan::Delay {
                delay: Duration::from_secs(3),
                retries: 1,
                reason: "busy".into()
            }
        );
        assert!(matches!(plan(&p, 2, asked), Plan::DeadLetter { .. }));
        assert!(matches!(
            plan(&RetryPolicy::none(), 0, Disposition::retry("x")),
            Plan::DeadLetter { .. }
        ));
    }

    #[test]
    fn other_dispositions_settle_or_dead_letter_at_once() {
        let p = policy();
        assert_eq!(run_again(&p, 0, &Disposition::Requeue), None);
        assert_eq!(plan(&p, 0, Disposition::Ack), Plan::Settle(Decision::Ack));
        assert_eq!(
            plan(&p, 0, Disposition::Requeue),
            Plan::Settle(Decision::Requeue)
        );
        assert_eq!(
            plan(&p, 0, Disposition::dead_letter("no")),
            Plan::DeadLetter {
                reason: "no".into(),
                kind: FailureKind::Permanent
            }
        );
        assert!(matches!(
            plan(&p, u32::MAX, Disposition::retry("forged count")),
            Plan::DeadLetter { .. }
        ));
    }

    #[test]
    fn asked_delays_round_up_onto_a_small_ladder() {
        let s = |ms| delay_step(Duration::from_millis(ms)).as_millis();
        assert_eq!(s(0), 1_000);
        assert_eq!(s(2_400), 3_000);
        assert_eq!(s(10_000), 10_000);
        assert_eq!(s(10_001), 20_000);
        assert_eq!(s(100_001), 120_000);
        assert_eq!(s(3_600_001), 7_200_000);
        assert_eq!(s(u64::MAX), MAX_ASKED_DELAY.as_millis());
        let mut distinct: Vec<u128> = (0..=MAX_ASKED_DELAY.as_millis() as u64)
            .step_by(997)
            .map(s)
            .collect();
        distinct.dedup();
        assert!(distinct.len() <= 110, "{}", distinct.len());
        for ms in (0..200_000u64).step_by(137) {
            assert!(s(ms) >= u128::from(ms), "never early: {ms}");
        }
    }
}
