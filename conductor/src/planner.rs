//! Recipients → batches. Pure.

/// One batch: recipient ids `first .. first + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    pub n: u32,
    pub first: i64,
    pub len: u32,
}

/// Recipients are numbered `0..total` in list order; batch `n` holds ids `n × size ..`.
pub fn plan(total: usize, batch_size: u32) -> Vec<BatchPlan> {
    let size = batch_size.max(1) as usize;
    (0..total.div_ceil(size))
        .map(|n| BatchPlan {
            n: n as u32,
            first: (n * size) as i64,
            len: size.min(total - n * size) as u32,
        })
        .collect()
}

pub fn batch_of(recipient_id: i64, batch_size: u32) -> u32 {
    (recipient_id / i64::from(batch_size.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_recipient_once() {
        let p = plan(2_501, 1_000);
        assert_eq!(
            p,
            vec![
                BatchPlan {
                    n: 0,
                    first: 0,
                    len: 1_000
                },
                BatchPlan {
                    n: 1,
                    first: 1_000,
                    len: 1_000
                },
                BatchPlan {
                    n: 2,
                    first: 2_000,
                    len: 501
                },
            ]
        );
        assert_eq!(batch_of(2_500, 1_000), 2);
        assert_eq!(plan(1_000, 1_000).len(), 1);
        assert!(plan(0, 1_000).is_empty());
        assert_eq!(plan(3, 1).len(), 3);
    }
}
