//! Recipients → batches. Pure.
//!
//! Recipients are numbered in list order as they are read (a duplicate dropped by the store leaves
//! its number unused); batch `n` holds the ids `n × size .. (n + 1) × size`, so a batch is a range of
//! the primary key, read without scanning the campaign.

pub fn batch_of(recipient_id: i64, batch_size: u32) -> u32 {
    (recipient_id / i64::from(batch_size.max(1))) as u32
}

/// The ids batch `n` may hold.
pub fn ids_of(batch: u32, batch_size: u32) -> std::ops::Range<i64> {
    let size = i64::from(batch_size.max(1));
    let first = i64::from(batch) * size;
    first..first + size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_a_range_of_ids() {
        assert_eq!(batch_of(0, 1_000), 0);
        assert_eq!(batch_of(999, 1_000), 0);
        assert_eq!(batch_of(2_500, 1_000), 2);
        assert_eq!(batch_of(7, 0), 7, "a zero size counts as one");
        assert_eq!(ids_of(2, 1_000), 2_000..3_000);
        for id in ids_of(5, 7) {
            assert_eq!(batch_of(id, 7), 5);
        }
    }
}
