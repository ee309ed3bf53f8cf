//! The partition count a message was published for, carried in a header
//! and checked on consume: a publisher and a consumer that disagree on N
//! (a repartitioning half done) is seen, not silently mixed.

use crate::consumer::{Delivery, Disposition, FailureKind, Next};
use crate::message::HeaderValue;
use crate::publisher::BoxFuture;

/// Header with the partition count the publisher routed for.
pub const PARTITIONS_HEADER: &str = "x-rabbitry-partitions";

/// Why a delivery's partition count does not fit the consumer's.
pub(crate) fn count_mismatch(header: Option<&HeaderValue>, expected: u32) -> Option<String> {
    let value = header?;
    match value.as_i64() {
        Some(n) if n == i64::from(expected) => None,
        Some(n) => Some(format!(
            "published for {n} partitions, consumed as one of {expected}: publishers and consumers disagree on the partition count"
        )),
        None => Some(format!("the {PARTITIONS_HEADER} header is not a number")),
    }
}

/// A consumer layer that dead-letters a message published for another
/// partition count than `expected` (its key may have other messages in
/// another partition, so handling it here could break its order). A
/// message without the header (not from a [`PartitionedPublisher`](super::PartitionedPublisher))
/// passes.
///
/// ```no_run
/// # fn f(b: rabbitry_core::ConsumerBuilder) -> rabbitry_core::ConsumerBuilder {
/// b.layer(rabbitry_core::check_partition_count(4))
/// # }
/// ```
pub fn check_partition_count(
    expected: u32,
) -> impl Fn(Delivery, Next) -> BoxFuture<'static, Disposition> + Send + Sync + Clone + 'static {
    move |d: Delivery, next: Next| {
        Box::pin(async move {
            match count_mismatch(d.header(PARTITIONS_HEADER), expected) {
                None => next.run(d).await,
                Some(reason) => {
                    tracing::error!(message_id = d.id(), queue = d.queue(), %reason, "partition count mismatch");
                    Disposition::DeadLetter {
                        reason,
                        kind: FailureKind::Permanent,
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_that_differs_or_is_not_a_number_is_named() {
        assert_eq!(count_mismatch(None, 4), None);
        assert_eq!(count_mismatch(Some(&HeaderValue::Int(4)), 4), None);
        assert_eq!(count_mismatch(Some(&HeaderValue::UInt8(4)), 4), None);
        let m = count_mismatch(Some(&HeaderValue::Int(8)), 4).expect("mismatch");
        assert!(m.contains("8 partitions") && m.contains("of 4"), "{m}");
        let m = count_mismatch(Some(&HeaderValue::Str("four".into())), 4).expect("bad");
        assert!(m.contains("not a number"), "{m}");
        assert!(count_mismatch(Some(&HeaderValue::Float(4.0)), 4).is_some());
    }
}
