//! Group commit: many inputs, one fsync.
//!
//! Inputs hand their samples to the [`Committer`] and wait. One task takes
//! everything queued (up to `max_samples`), optionally waits `max_delay`
//! for more, appends it all to the buffer, flushes once, and then releases
//! every waiting input. Whatever arrives while a flush runs goes into the
//! next one, so groups grow with the load by themselves. An input
//! acknowledges its device only after that release, so an acked sample is
//! on disk.
//!
//! An acknowledgement waits for at most the flush in progress, its own
//! flush, and `max_delay` (0 by default: a linger measured slower, see
//! `benches/buffer.rs`).
//!
//! Each commit is timed by a [`CommitWatch`] for the watchdog, and the loop
//! sends systemd's keep-alives after commits and while idle (see
//! [`crate::watchdog`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::buffer::{Buffer, SessionOp};
use crate::sample::{Class, Record};
use crate::watchdog::{CommitWatch, KeepAlive};

/// Fault injection for the watchdog's test: with a number N, every group
/// commit after the N-th never finishes.
pub const STALL_AFTER_ENV: &str = "DASH_TEST_STALL_COMMIT_AFTER";

struct Pending {
    class: Class,
    records: Vec<Record>,
    /// An idempotency key: the records are stored only if it was not seen.
    key: Option<Vec<u8>>,
    /// Device session changes, written with the records (or with nothing).
    session: Vec<SessionOp>,
    done: oneshot::Sender<Result<Stored, CommitError>>,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The records are on disk.
    New,
    /// A request with the same idempotency key was stored before; nothing
    /// was written.
    Duplicate,
}

/// Why a commit failed. The input must not acknowledge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("the buffer could not store the samples: {0}")]
    Buffer(String),
    #[error("the buffer is full and {} are refused when full; retry later", .0.name())]
    Full(Class),
    #[error("the agent is shutting down")]
    Closed,
}

/// A handle inputs use to make samples durable.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
    /// Records dropped because the protocol would refuse them (a clock
    /// from 1970, a key made too long by a transform).
    invalid: Arc<std::sync::atomic::AtomicU64>,
    watch: Arc<CommitWatch>,
}

impl Committer {
    /// Starts the commit task. It ends when every handle is dropped and the
    /// queue is drained. `full` is notified when a batch's worth is unsealed.
    pub fn spawn(
        buffer: Arc<Buffer>,
        max_delay: Duration,
        max_samples: usize,
        seal_at: u64,
        full: Arc<Notify>,
    ) -> (Committer, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(4096);
        let watch = Arc::new(CommitWatch::default());
        let stall_after = std::env::var(STALL_AFTER_ENV)
            .ok()
            .and_then(|n| n.parse().ok());
        let task = tokio::spawn(run(
            buffer,
            rx,
            Group {
                max_delay,
                max_samples,
            },
            seal_at,
            full,
            Watch {
                watch: watch.clone(),
                keep_alive: KeepAlive::from_env(),
                stall_after,
            },
        ));
        (
            Committer {
                queue,
                invalid: Arc::default(),
                watch,
            },
            task,
        )
    }

    /// The timing of the commit in progress, for [`crate::watchdog::spawn`].
    pub fn watch(&self) -> &Arc<CommitWatch> {
        &self.watch
    }

    /// The counter behind [`Committer::invalid`], for the status; holding it
    /// does not keep the commit task alive.
    pub fn invalid_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.invalid.clone()
    }

    /// Records dropped so far because the protocol would refuse them.
    pub fn invalid(&self) -> u64 {
        self.invalid.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues records of one class with an optional idempotency key (unique
    /// per input: prefix it with the source); the ticket says whether they
    /// were stored or the key was seen before.
    pub async fn enqueue_records(
        &self,
        class: Class,
        records: Vec<Record>,
        key: Option<Vec<u8>>,
    ) -> Result<Ticket, CommitError> {
        self.enqueue(class, records, key, Vec::new()).await
    }

    /// Queues telemetry with the device session changes that must be
    /// stored with it, in the same transaction; either may be empty.
    pub async fn enqueue_with_session(
        &self,
        records: Vec<Record>,
        session: Vec<SessionOp>,
    ) -> Result<Ticket, CommitError> {
        self.enqueue(Class::Telemetry, records, None, session).await
    }

    async fn enqueue(
        &self,
        class: Class,
        records: Vec<Record>,
        key: Option<Vec<u8>>,
        session: Vec<SessionOp>,
    ) -> Result<Ticket, CommitError> {
        let limits = dash_shared::Limits::default();
        let mut records = records;
        records.retain(|r| match r.validate(&limits) {
            Ok(()) => true,
            Err(e) => {
                self.invalid.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, record = ?r, "record the protocol would refuse dropped before buffering");
                false
            }
        });
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Pending {
                class,
                records,
                key,
                session,
                done,
            })
            .await
            .map_err(|_| CommitError::Closed)?;
        Ok(Ticket(wait))
    }
}

/// Resolves when the records it was issued for are durable.
pub struct Ticket(oneshot::Receiver<Result<Stored, CommitError>>);

impl Ticket {
    /// A ticket resolved by hand, for tests of what waits on one.
    #[cfg(test)]
    pub(crate) fn by_hand() -> (oneshot::Sender<Result<Stored, CommitError>>, Ticket) {
        let (tx, rx) = oneshot::channel();
        (tx, Ticket(rx))
    }

    /// The outcome if the commit already finished, without waiting.
    pub fn ready(&mut self) -> Option<Result<Stored, CommitError>> {
        match self.0.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(CommitError::Closed)),
        }
    }

    pub async fn wait(self) -> Result<Stored, CommitError> {
        self.0.await.map_err(|_| CommitError::Closed)?
    }
}

/// How groups are formed.
struct Group {
    max_delay: Duration,
    max_samples: usize,
}

/// What the loop reports to the watchdogs.
struct Watch {
    watch: Arc<CommitWatch>,
    keep_alive: KeepAlive,
    /// Fault injection ([`STALL_AFTER_ENV`]).
    stall_after: Option<u64>,
}

async fn run(
    buffer: Arc<Buffer>,
    mut rx: mpsc::Receiver<Pending>,
    group_by: Group,
    seal_at: u64,
    full: Arc<Notify>,
    mut watch: Watch,
) {
    // While idle, wake up to send keep-alives (an hour when not asked for).
    let idle = watch
        .keep_alive
        .interval()
        .map_or(Duration::from_secs(3600), |every| every / 2);
    let mut commits = 0u64;
    loop {
        let first = tokio::select! {
            next = rx.recv() => match next {
                Some(p) => p,
                None => break,
            },
            // Idle, and turning: tell systemd.
            _ = tokio::time::sleep(idle) => {
                watch.keep_alive.tick(std::time::Instant::now());
                continue;
            }
        };
        let (group, count) = gather(first, &mut rx, &group_by).await;
        watch.watch.begin();
        if watch.stall_after.is_some_and(|n| commits >= n) {
            tracing::warn!("{STALL_AFTER_ENV}: this group commit never finishes");
            std::future::pending::<()>().await;
        }
        let result = store(&buffer, &group).await;
        watch.watch.end();
        commits += 1;
        watch.keep_alive.tick(std::time::Instant::now());
        match result {
            Ok(outcomes) => {
                for (p, outcome) in group.into_iter().zip(outcomes) {
                    let _ = p.done.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = count, "group commit failed; inputs will not be acknowledged");
                for p in group {
                    let _ = p.done.send(Err(CommitError::Buffer(e.clone())));
                }
            }
        }
        if buffer.unsealed() >= seal_at {
            full.notify_one();
        }
    }
}

/// Takes `first` and whatever else is queued (or arrives within
/// `max_delay`), up to `max_samples`; returns the group and its records.
async fn gather(
    first: Pending,
    rx: &mut mpsc::Receiver<Pending>,
    by: &Group,
) -> (Vec<Pending>, usize) {
    let mut count = first.records.len();
    let mut group = vec![first];
    let deadline = tokio::time::Instant::now() + by.max_delay;
    while count < by.max_samples {
        let next = match rx.try_recv() {
            Ok(p) => Some(p),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            // No linger: flush now (a zero timeout would still wait
            // for the timer's next millisecond tick).
            Err(mpsc::error::TryRecvError::Empty) if by.max_delay.is_zero() => None,
            Err(mpsc::error::TryRecvError::Empty) => tokio::time::timeout_at(deadline, rx.recv())
                .await
                .ok()
                .flatten(),
        };
        let Some(p) = next else { break };
        count += p.records.len();
        group.push(p);
    }
    (group, count)
}

/// Appends the group's records, one write per class (skipping requests
/// whose idempotency key was stored before, or comes twice in the group),
/// and flushes once. A class the buffer's budget refuses fails its requests
/// with [`CommitError::Full`]; the rest are stored.
async fn store(
    buffer: &Buffer,
    group: &[Pending],
) -> Result<Vec<Result<Stored, CommitError>>, String> {
    let mut outcomes: Vec<Result<Stored, CommitError>> = Vec::with_capacity(group.len());
    let mut keys: [Vec<Vec<u8>>; 2] = Default::default();
    let mut all: [Vec<Record>; 2] = Default::default();
    let mut session: [Vec<SessionOp>; 2] = Default::default();
    // A request whose key came earlier in this group shares that request's
    // fate: if the first is refused, so is the second.
    let mut first_with_key: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut same_as: Vec<Option<usize>> = vec![None; group.len()];
    for (i, p) in group.iter().enumerate() {
        let c = p.class.index();
        if let Some(key) = &p.key {
            if let Some((_, first)) = first_with_key.iter().find(|(k, _)| k == key) {
                same_as[i] = Some(*first);
                outcomes.push(Ok(Stored::Duplicate));
                continue;
            }
            if buffer.seen(key).map_err(|e| e.to_string())? {
                outcomes.push(Ok(Stored::Duplicate));
                continue;
            }
            first_with_key.push((key.clone(), i));
            keys[c].push(key.clone());
        }
        all[c].extend(p.records.iter().cloned());
        session[c].extend(p.session.iter().cloned());
        outcomes.push(Ok(Stored::New));
    }
    let mut refused = [false; 2];
    for class in Class::ALL {
        let c = class.index();
        if all[c].is_empty() && keys[c].is_empty() && session[c].is_empty() {
            continue;
        }
        let result = buffer.append_with_sessions(class, &all[c], &keys[c], &session[c]);
        buffer.note(&result);
        refused[c] = !result.map_err(|e| e.to_string())?;
    }
    // Requests that carry only session changes (a CONNACK's reset, a
    // PUBREL) are not refused with the records of their class: they are
    // written alone, and take no room.
    let mut alone = vec![false; group.len()];
    for class in Class::ALL {
        let c = class.index();
        if !refused[c] {
            continue;
        }
        let mut ops = Vec::new();
        for (i, p) in group.iter().enumerate() {
            if p.class == class && p.records.is_empty() && p.key.is_none() && !p.session.is_empty()
            {
                ops.extend(p.session.iter().cloned());
                alone[i] = true;
            }
        }
        if !ops.is_empty() {
            let result = buffer.append_with_sessions(class, &[], &[], &ops);
            buffer.note(&result);
            result.map_err(|e| e.to_string())?;
        }
    }
    buffer.flush().await.map_err(|e| e.to_string())?;
    for (i, (p, outcome)) in group.iter().zip(outcomes.iter_mut()).enumerate() {
        if refused[p.class.index()] && !alone[i] && matches!(outcome, Ok(Stored::New)) {
            *outcome = Err(CommitError::Full(p.class));
        }
    }
    for (i, first) in same_as.iter().enumerate() {
        if let Some(first) = first {
            if let Err(e) = &outcomes[*first] {
                outcomes[i] = Err(e.clone());
            }
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Sample;
    use dash_shared::SeriesKey;

    #[tokio::test]
    async fn records_the_protocol_would_refuse_are_dropped_before_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = Arc::new(Buffer::open(dir.path()).unwrap());
        let (committer, task) = Committer::spawn(
            buffer.clone(),
            Duration::from_millis(1),
            100,
            1_000,
            Arc::new(Notify::new()),
        );
        let reading = |ts| {
            Record::Sample(Sample {
                key: SeriesKey::new("d", "m"),
                ts,
                value: 1.0,
            })
        };
        // A gateway whose clock has not been set yet stamps 1970.
        let ticket = committer
            .enqueue_records(
                Class::Telemetry,
                vec![reading(1_000), reading(1_764_000_000_000_000)],
                None,
            )
            .await
            .unwrap();
        assert_eq!(ticket.wait().await.unwrap(), Stored::New);
        assert_eq!(committer.invalid(), 1);
        assert_eq!(buffer.unsealed(), 1);
        // The buffer still seals: nothing in it stops a batch.
        assert_eq!(buffer.seal(10).await.unwrap(), Some(1));
        drop(committer);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_retry_in_the_same_group_as_a_refused_request_is_refused_too() {
        let dir = tempfile::tempdir().unwrap();
        let budget = crate::buffer::Budget {
            max_bytes: 400,
            ..Default::default()
        };
        let buffer = Arc::new(Buffer::open(dir.path()).unwrap().with_budget(budget));
        let sale = |v: f64| {
            Record::Sample(Sample {
                key: SeriesKey::new("till-1", "sales.amount"),
                ts: 1_764_000_000_000_000,
                value: v,
            })
        };
        let mut v = 0.0;
        while buffer
            .append_records(Class::Transactions, &[sale(v)], &[])
            .unwrap()
        {
            v += 1.0;
        }
        // A long linger puts the request and its retry in one group.
        let (committer, task) = Committer::spawn(
            buffer.clone(),
            Duration::from_millis(200),
            100,
            1_000,
            Arc::new(Notify::new()),
        );
        let key = Some(b"pos\0sale-1".to_vec());
        let first = committer
            .enqueue_records(Class::Transactions, vec![sale(1.5)], key.clone())
            .await
            .unwrap();
        let retry = committer
            .enqueue_records(Class::Transactions, vec![sale(1.5)], key)
            .await
            .unwrap();
        assert!(matches!(first.wait().await, Err(CommitError::Full(_))));
        assert!(
            matches!(retry.wait().await, Err(CommitError::Full(_))),
            "the retry must not be told it was stored"
        );
        drop(committer);
        task.await.unwrap();
    }
}
