//! Which running campaign the next lease goes to: smooth weighted round-robin (nginx's), so a
//! campaign of priority 3 gets three leases for every one of a priority-1 campaign, interleaved rather
//! than in runs, and a campaign started during a 50M send gets its share from its first lease. Pure;
//! the store keeps the state between leases.

use std::collections::HashMap;

/// Running credit per campaign. Forgets campaigns that stop running.
#[derive(Debug, Default, Clone)]
pub struct Fair {
    credit: HashMap<String, i64>,
}

impl Fair {
    /// The campaigns in the order to try them for the next lease: the one whose turn it is first, then
    /// the rest by credit, so a campaign with nothing sendable right now passes its turn on without
    /// losing it. `running` is `(campaign, priority)`; priorities below 1 count as 1. Changes nothing
    /// until [`Fair::served`] says who got the lease.
    pub fn order(&mut self, running: &[(String, u32)]) -> Vec<String> {
        self.credit
            .retain(|id, _| running.iter().any(|(r, _)| r == id));
        let mut order: Vec<(i64, usize, &String)> = running
            .iter()
            .enumerate()
            .map(|(i, (id, p))| {
                let credit = self.credit.get(id).copied().unwrap_or(0);
                (credit + i64::from((*p).max(1)), i, id)
            })
            .collect();
        // Highest credit first; ties go to the campaign created first.
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        order.into_iter().map(|(_, _, id)| id.clone()).collect()
    }

    /// `taken` got a lease: every running campaign gains its weight, `taken` pays the total.
    pub fn served(&mut self, taken: &str, running: &[(String, u32)]) {
        let total: i64 = running.iter().map(|(_, p)| i64::from((*p).max(1))).sum();
        for (id, p) in running {
            *self.credit.entry(id.clone()).or_insert(0) += i64::from((*p).max(1));
        }
        if let Some(c) = self.credit.get_mut(taken) {
            *c -= total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` leases, each to the campaign whose turn it is.
    fn run(fair: &mut Fair, running: &[(String, u32)], n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let first = fair.order(running)[0].clone();
                fair.served(&first, running);
                first
            })
            .collect()
    }

    fn c(id: &str, p: u32) -> (String, u32) {
        (id.to_string(), p)
    }

    #[test]
    fn equal_priorities_alternate_from_the_first_lease() {
        let mut f = Fair::default();
        // The big campaign has had the field to itself for a while.
        run(&mut f, &[c("big", 1)], 1_000);
        let both = [c("big", 1), c("small", 1)];
        let picks = run(&mut f, &both, 10);
        assert_eq!(picks.iter().filter(|p| *p == "small").count(), 5);
        assert!(picks[..2].contains(&"small".to_string()), "{picks:?}");
    }

    #[test]
    fn priorities_weight_the_share_and_interleave() {
        let mut f = Fair::default();
        let running = [c("transactional", 3), c("bulk", 1)];
        let picks = run(&mut f, &running, 40);
        assert_eq!(picks.iter().filter(|p| *p == "transactional").count(), 30);
        // Never more than three in a row for the heavy one, never two in a row for the light one.
        for w in picks.windows(4) {
            assert!(w.iter().any(|p| p == "bulk"), "{picks:?}");
        }
        for w in picks.windows(2) {
            assert!(!(w[0] == "bulk" && w[1] == "bulk"), "{picks:?}");
        }
    }

    #[test]
    fn a_campaign_with_nothing_to_send_keeps_its_turn() {
        let mut f = Fair::default();
        let running = [c("a", 1), c("b", 1)];
        let order = f.order(&running);
        assert_eq!(order, vec!["a", "b"]);
        // a had nothing sendable; b took the lease. Asking without a lease changes nothing either.
        f.served("b", &running);
        f.order(&running);
        assert_eq!(f.order(&running)[0], "a");
        // Campaigns that stop running are forgotten.
        f.order(&[c("b", 1)]);
        assert!(!f.credit.contains_key("a"));
    }

    #[test]
    fn a_small_campaign_is_served_within_a_minute_of_leases_alongside_a_huge_one() {
        // 5-second leases alternate between campaigns: in one minute of a sender's two lanes
        // (~24 leases) a 5k campaign started during a 50M send gets half of them.
        let mut f = Fair::default();
        run(&mut f, &[c("50M", 1)], 10_000);
        let picks = run(&mut f, &[c("50M", 1), c("5k", 1)], 24);
        assert_eq!(picks.iter().filter(|p| *p == "5k").count(), 12);
    }
}
