//! The sender: a step function (`try_one_lease`) and a loop that only decides when to call it again.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use renderer::{BodyStore, RenderedBatch};
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Millis};
use crate::lease::{
    LeaseReply, Outcome, RecipientOutcome, SendLease, WorkError, WorkSource, HEARTBEAT_MS,
};
use crate::pacing::{self, Next};
use crate::provider::{OutgoingMessage, Provider};

#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Recipients a lane asks for in its first lease, and never fewer.
    pub lease_size: usize,
    /// The most a lane asks for once its leases are spent fast (a lease sent whole in under 250 ms
    /// doubles the next ask); below `lease_size`, the ask never grows.
    pub max_lease_size: usize,
    /// Requests in flight at once, per lane.
    pub concurrency: usize,
    /// Leases worked at once; a second lane keeps the slot line busy while the first waits for its
    /// last answers.
    pub lanes: usize,
    /// The provider's own per-second limit, if it has one (SES MaxSendRate, Resend).
    pub per_second: Option<NonZeroU32>,
    /// How long to wait before asking again when there is nothing to send.
    pub idle_poll_ms: i64,
    /// Outcomes are reported in chunks of this size (and at the end of each lease), so a crash
    /// leaves at most a chunk's worth of recipients `unknown`...
    pub report_every: usize,
    /// ...or what was sent in this long, whichever is more: uncapped, 50 outcomes arrive every
    /// few milliseconds, and a report each time would make the store's writer the bottleneck.
    pub report_interval_ms: Millis,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            lease_size: 200,
            max_lease_size: 1_000,
            concurrency: 32,
            lanes: 2,
            per_second: None,
            idle_poll_ms: 250,
            report_every: 50,
            report_interval_ms: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A lease was worked: this many requests made, this many recipients handed back unsent.
    Worked { attempted: usize, released: usize },
    /// Nothing to do; ask again after a pause.
    Idle,
    /// The minute's budget is spent; ask again at this time.
    WaitUntil(Millis),
}

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error(transparent)]
    Work(#[from] WorkError),
    #[error("rendered batch {key}: {reason}")]
    Batch { key: String, reason: String },
}

/// Why a lease stopped before its last token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    /// The minute's deadline passed: a token is never spent late.
    Expired,
    /// The sender is shutting down.
    Stopping,
    /// The provider refused the account: nothing more goes out on it.
    AccountStop,
    /// The conductor could not be told what was done: no send starts unheard.
    Unheard,
    /// The conductor no longer holds the lease (it expired): it has settled the recipients already,
    /// and may have queued them again.
    Lost,
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    Yes,
    No,
    LeaseLost,
}

/// A lease being worked: the outcomes not yet reported, and what they have told us.
struct Run {
    done: Vec<RecipientOutcome>,
    account_stopped: bool,
    /// A report found the lease gone.
    lost: bool,
    /// When the conductor last heard from us.
    heard: Millis,
}

impl Run {
    fn new(heard: Millis) -> Self {
        Self {
            done: Vec::new(),
            account_stopped: false,
            lost: false,
            heard,
        }
    }

    fn collect(&mut self, outcomes: Vec<RecipientOutcome>) {
        self.account_stopped |= outcomes
            .iter()
            .any(|o| matches!(o.outcome, Outcome::AccountStop { .. }));
        self.done.extend(outcomes);
    }
}

/// A lease spent whole faster than this is worth growing: the lane waits tens of milliseconds for
/// each lease to be granted and closed, and sends nothing meanwhile.
const FAST_LEASE_MS: Millis = 250;
/// A lease that took this long is larger than it needs to be: the ask comes back down.
const SLOW_LEASE_MS: Millis = 2_000;

/// How many recipients a lane asks for next. Uncapped, a lease of 200 was sent in about 14 ms
/// against about 19 ms waiting to have it granted and closed (p50s), and asks growing to 1,000 sent
/// 8 % more per second with the embedded sender and 35–85 % more with two sender processes
/// (throughput bench, runs side by side); under a cap the slots' spacing makes every lease slow,
/// and the ask stays at `lease_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ask {
    want: usize,
    min: usize,
    max: usize,
}

impl Ask {
    fn new(cfg: &SenderConfig) -> Self {
        let min = cfg.lease_size.max(1);
        Self {
            want: min,
            min,
            max: cfg.max_lease_size.max(min),
        }
    }

    /// The next ask after a step that took `took_ms`: twice as many after a lease spent whole and
    /// fast, half as many after a slow one; as it was otherwise.
    fn after(self, step: Step, took_ms: Millis) -> Self {
        let want = match step {
            Step::Worked {
                attempted,
                released: 0,
            } if attempted > 0 && took_ms < FAST_LEASE_MS => self.want.saturating_mul(2),
            Step::Worked { .. } if took_ms > SLOW_LEASE_MS => self.want / 2,
            _ => self.want,
        };
        Self {
            want: want.clamp(self.min, self.max),
            ..self
        }
    }
}

/// How many decoded batches to keep: consecutive leases usually come from the same batch.
const BATCH_CACHE: usize = 4;

type Limiter = governor::DefaultDirectRateLimiter;

pub struct Sender {
    source: Arc<dyn WorkSource>,
    bodies: Arc<dyn BodyStore>,
    provider: Arc<dyn Provider>,
    clock: Arc<dyn Clock>,
    cfg: SenderConfig,
    stop: CancellationToken,
    per_second: Option<Limiter>,
    batches: Mutex<Vec<(String, Arc<RenderedBatch>)>>,
}

impl Sender {
    pub fn new(
        source: Arc<dyn WorkSource>,
        bodies: Arc<dyn BodyStore>,
        provider: Arc<dyn Provider>,
        clock: Arc<dyn Clock>,
        cfg: SenderConfig,
        stop: CancellationToken,
    ) -> Self {
        let per_second = cfg
            .per_second
            .map(|n| governor::RateLimiter::direct(governor::Quota::per_second(n)));
        Self {
            source,
            bodies,
            provider,
            clock,
            cfg,
            stop,
            per_second,
            batches: Mutex::new(Vec::new()),
        }
    }

    async fn batch(&self, key: &str) -> Result<Arc<RenderedBatch>, SenderError> {
        if let Some(b) = self
            .batches
            .lock()
            .expect("batch cache poisoned")
            .iter()
            .find(|(k, _)| k == key)
        {
            return Ok(b.1.clone());
        }
        let fail = |reason: String| SenderError::Batch {
            key: key.to_string(),
            reason,
        };
        let bytes = self
            .bodies
            .get(key)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let batch = tokio::task::spawn_blocking(move || RenderedBatch::decode(&bytes))
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
        let batch = Arc::new(batch);
        let mut cache = self.batches.lock().expect("batch cache poisoned");
        if cache.len() >= BATCH_CACHE {
            cache.remove(0);
        }
        cache.push((key.to_string(), batch.clone()));
        Ok(batch)
    }

    /// Leases once (`lease_size` recipients) and works that lease to the end.
    pub async fn try_one_lease(&self) -> Result<Step, SenderError> {
        self.try_lease(self.cfg.lease_size).await
    }

    async fn try_lease(&self, want: usize) -> Result<Step, SenderError> {
        let lease = match self.source.lease(want).await? {
            LeaseReply::Idle => return Ok(Step::Idle),
            LeaseReply::NoTokens { until } => return Ok(Step::WaitUntil(until)),
            LeaseReply::Lease(l) => l,
        };
        let batch = match self.batch(&lease.body_key).await {
            Ok(b) => b,
            Err(e) => {
                // Every recipient back unsent, saying why, so the conductor renders the batch again;
                // the tokens are forfeit, nothing else is lost.
                let now = self.clock.now_ms();
                let unreadable = lease
                    .recipients
                    .iter()
                    .map(|&recipient_id| RecipientOutcome {
                        recipient_id,
                        outcome: Outcome::Unreadable {
                            reason: e.to_string(),
                        },
                        at: now,
                        latency_ms: None,
                    })
                    .collect();
                self.source
                    .report(&lease.lease_id, unreadable, true)
                    .await?;
                return Err(e);
            }
        };
        self.work(&lease, &batch).await
    }

    /// Works a lease: each request at its slot, until its tokens are spent or something halts it;
    /// then waits for the answers still coming and reports them.
    async fn work(&self, lease: &SendLease, batch: &RenderedBatch) -> Result<Step, SenderError> {
        let mut in_flight = FuturesUnordered::new();
        // Granting the lease is the first time we are heard from.
        let mut run = Run::new(self.clock.now_ms());
        let limit = self.provider.batch_limit().max(1);
        // Tokens started so far: every token before `k` is in a request.
        let mut k = 0;
        let halt = loop {
            if k >= lease.tokens() {
                break None;
            }
            // Take in whatever has answered, so an account stop halts the lease at once.
            while let Some(Some(o)) = in_flight.next().now_or_never() {
                run.collect(o);
            }
            if let Some(h) = self.halt(&run) {
                break Some(h);
            }
            // Tokens k..end go in one request (one token each) at the slot of the last of them.
            let end = pacing::batch_end(lease, k, limit);
            if let Err(h) = self
                .wait_for_slot(lease, end, &mut in_flight, &mut run)
                .await
            {
                break Some(h);
            }
            while in_flight.len() >= self.cfg.concurrency.max(1) {
                if let Some(o) = in_flight.next().await {
                    run.collect(o);
                }
            }
            self.per_second_room(end - k).await;
            let now = match self.still_on_time(lease, &mut run).await {
                Ok(now) => now,
                Err(h) => break Some(h),
            };
            in_flight.push(self.request(batch, &lease.recipients[k..end], now));
            k = end;
            self.report_if_due(lease, &mut run).await;
        };
        if let Some(halt) = halt {
            tracing::debug!(lease = %lease.lease_id, ?halt, started = k, "lease stopped before its last token");
        }
        while let Some(o) = in_flight.next().await {
            run.done.extend(o);
        }
        let _ = self.flush(lease, &mut run.done, true).await;
        Ok(Step::Worked {
            attempted: k,
            released: lease.tokens() - k,
        })
    }

    /// Whether the lease must stop before its next request: the account was refused, or the sender
    /// is stopping.
    fn halt(&self, run: &Run) -> Option<Halt> {
        if run.account_stopped {
            Some(Halt::AccountStop)
        } else if run.lost {
            Some(Halt::Lost)
        } else if self.stop.is_cancelled() {
            Some(Halt::Stopping)
        } else {
            None
        }
    }

    /// Waits for the slot of token `end - 1`, taking in answers meanwhile.
    async fn wait_for_slot<F>(
        &self,
        lease: &SendLease,
        end: usize,
        in_flight: &mut FuturesUnordered<F>,
        run: &mut Run,
    ) -> Result<(), Halt>
    where
        F: std::future::Future<Output = Vec<RecipientOutcome>>,
    {
        loop {
            match pacing::next(lease, end - 1, self.clock.now_ms()) {
                Next::Go => return Ok(()),
                Next::Expired => return Err(Halt::Expired),
                Next::WaitUntil(t) => {
                    tokio::select! {
                        _ = self.clock.sleep_until(t) => {}
                        Some(o) = in_flight.next(), if !in_flight.is_empty() => run.collect(o),
                        _ = self.stop.cancelled() => return Err(Halt::Stopping),
                    }
                }
            }
        }
    }

    /// Waits for room under the provider's own per-second limit, if it has one.
    async fn per_second_room(&self, tokens: usize) {
        if let Some(limiter) = &self.per_second {
            let n = NonZeroU32::new(tokens as u32).unwrap_or(NonZeroU32::MIN);
            if limiter.until_n_ready(n).await.is_err() {
                // More than the provider allows in a second: one by one, then.
                for _ in 0..n.get() {
                    limiter.until_ready().await;
                }
            }
        }
    }

    /// The time the next request starts at, if it may: waiting for room may have carried us past the
    /// minute (a token is never spent late), and no send starts unless the conductor heard from us
    /// within the heartbeat — if it cannot hear us, we stop rather than send what it would have to
    /// count as in doubt.
    async fn still_on_time(&self, lease: &SendLease, run: &mut Run) -> Result<Millis, Halt> {
        let now = self.clock.now_ms();
        if now >= lease.deadline {
            return Err(Halt::Expired);
        }
        if run.account_stopped {
            return Err(Halt::AccountStop);
        }
        if run.lost {
            return Err(Halt::Lost);
        }
        if now - run.heard < HEARTBEAT_MS {
            return Ok(now);
        }
        match self.flush(lease, &mut run.done, false).await {
            Heard::Yes => {}
            Heard::No => return Err(Halt::Unheard),
            Heard::LeaseLost => {
                run.lost = true;
                return Err(Halt::Lost);
            }
        }
        let now = self.clock.now_ms();
        run.heard = now;
        if now >= lease.deadline {
            return Err(Halt::Expired);
        }
        Ok(now)
    }

    /// One request for `rids` (one message each; a batching provider takes them together), read
    /// into one outcome per recipient.
    fn request<'a>(
        &'a self,
        batch: &'a RenderedBatch,
        rids: &'a [i64],
        now: Millis,
    ) -> impl std::future::Future<Output = Vec<RecipientOutcome>> + 'a {
        let provider = &self.provider;
        async move {
            let msgs: Vec<_> = rids
                .iter()
                .filter_map(|&r| batch.message(r))
                .map(|message| OutgoingMessage { batch, message })
                .collect();
            let started = std::time::Instant::now();
            let mut sent = if msgs.is_empty() {
                Vec::new()
            } else {
                provider.send_batch(&msgs).await
            }
            .into_iter();
            let latency_ms = (!msgs.is_empty())
                .then(|| started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32);
            rids.iter()
                .map(|&rid| RecipientOutcome {
                    recipient_id: rid,
                    outcome: match batch.message(rid) {
                        Some(_) => sent.next().unwrap_or(Outcome::Unknown {
                            reason: "the provider gave fewer answers than messages".into(),
                        }),
                        None => Outcome::Failed {
                            reason: format!("recipient {rid} is missing from its rendered batch"),
                        },
                    },
                    at: now,
                    latency_ms: batch.message(rid).and(latency_ms),
                })
                .collect::<Vec<_>>()
        }
    }

    /// An interim report once enough outcomes wait and the last contact is long enough ago.
    async fn report_if_due(&self, lease: &SendLease, run: &mut Run) {
        if run.done.len() < self.cfg.report_every
            || self.clock.now_ms() - run.heard < self.cfg.report_interval_ms
        {
            return;
        }
        match self.flush(lease, &mut run.done, false).await {
            Heard::Yes => run.heard = self.clock.now_ms(),
            Heard::No => {}
            // Sending on would mail recipients the conductor has settled, or queued again.
            Heard::LeaseLost => run.lost = true,
        }
    }

    /// Reports what is done; whether the conductor got it. A failed interim report keeps its outcomes
    /// for the next one; the last report is retried a few times, after which the lease expires and
    /// the conductor settles its unreported recipients from their slots and our last report.
    async fn flush(
        &self,
        lease: &SendLease,
        done: &mut Vec<RecipientOutcome>,
        last: bool,
    ) -> Heard {
        let attempts = if last { 5 } else { 1 };
        for attempt in 0..attempts {
            match self
                .source
                .report(&lease.lease_id, done.clone(), last)
                .await
            {
                Ok(()) => {
                    done.clear();
                    return Heard::Yes;
                }
                Err(WorkError::LeaseLost(id)) => {
                    tracing::warn!(lease = %id, "lease lost before its outcomes were reported");
                    done.clear();
                    return Heard::LeaseLost;
                }
                Err(e) => {
                    tracing::warn!(lease = %lease.lease_id, error = %e, attempt, "report failed");
                    if last {
                        let backoff = 200 * (1 << attempt);
                        self.clock.sleep_until(self.clock.now_ms() + backoff).await;
                    }
                }
            }
        }
        Heard::No
    }

    /// Works leases on `lanes` lanes until stopped.
    pub async fn run(self: Arc<Self>) {
        let lanes: Vec<_> = (0..self.cfg.lanes.max(1))
            .map(|_| tokio::spawn(self.clone().lane()))
            .collect();
        for lane in lanes {
            let _ = lane.await;
        }
    }

    async fn lane(self: Arc<Self>) {
        let mut ask = Ask::new(&self.cfg);
        while !self.stop.is_cancelled() {
            let started = self.clock.now_ms();
            let step = self.try_lease(ask.want).await;
            if let Ok(step) = step {
                ask = ask.after(step, self.clock.now_ms() - started);
            }
            let until = match step {
                Ok(Step::Worked { .. }) => continue,
                Ok(Step::Idle) => self.clock.now_ms() + self.cfg.idle_poll_ms,
                Ok(Step::WaitUntil(t)) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "sender step failed");
                    self.clock.now_ms() + 1_000
                }
            };
            tokio::select! {
                _ = self.clock.sleep_until(until) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Ask, SenderConfig, Step};

    fn worked(attempted: usize, released: usize) -> Step {
        Step::Worked {
            attempted,
            released,
        }
    }

    #[test]
    fn the_ask_grows_while_leases_are_spent_fast_and_shrinks_back_when_slow() {
        let cfg = SenderConfig {
            lease_size: 200,
            max_lease_size: 1_000,
            ..SenderConfig::default()
        };
        let mut ask = Ask::new(&cfg);
        let mut seen = vec![ask.want];
        for _ in 0..4 {
            ask = ask.after(worked(ask.want, 0), 20);
            seen.push(ask.want);
        }
        assert_eq!(seen, vec![200, 400, 800, 1_000, 1_000]);
        // Neither fast nor slow, or not spent whole, or nothing to send: as it was.
        assert_eq!(ask.after(worked(1_000, 0), 1_000).want, 1_000);
        assert_eq!(ask.after(worked(600, 400), 20).want, 1_000);
        assert_eq!(ask.after(Step::Idle, 0).want, 1_000);
        assert_eq!(ask.after(Step::WaitUntil(5), 0).want, 1_000);
        // A cap's spacing makes leases slow: back down, never under `lease_size`.
        let mut slow = Vec::new();
        for _ in 0..4 {
            ask = ask.after(worked(ask.want, 0), 10_000);
            slow.push(ask.want);
        }
        assert_eq!(slow, vec![500, 250, 200, 200]);
    }

    #[test]
    fn a_ceiling_under_the_first_ask_is_the_first_ask() {
        let cfg = SenderConfig {
            lease_size: 2_000,
            max_lease_size: 1_000,
            ..SenderConfig::default()
        };
        let ask = Ask::new(&cfg);
        assert_eq!(ask.want, 2_000);
        assert_eq!(ask.after(worked(2_000, 0), 1).want, 2_000);
    }
}
