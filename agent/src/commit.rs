//! Group commit: many inputs, one fsync.
//!
//! Inputs hand their samples to the [`Committer`] and wait. One task takes
//! everything queued, waits at most `max_delay` for more (up to
//! `max_samples`), appends it all to the buffer, flushes once, and then
//! releases every waiting input. An input acknowledges its device only after
//! that release, so an acked sample is on disk.
//!
//! The window an acknowledgement waits is the flush time plus at most
//! `max_delay` (5 ms by default).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::buffer::Buffer;
use crate::sample::{Record, Sample};

struct Pending {
    records: Vec<Record>,
    /// An idempotency key: the records are stored only if it was not seen.
    key: Option<Vec<u8>>,
    done: oneshot::Sender<Result<Stored, String>>,
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
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the buffer could not store the samples: {0}")]
    Buffer(String),
    #[error("the agent is shutting down")]
    Closed,
}

/// A handle inputs use to make samples durable.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
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
        let task = tokio::spawn(run(buffer, rx, max_delay, max_samples, seal_at, full));
        (Committer { queue }, task)
    }

    /// Returns once `samples` are flushed to disk.
    pub async fn commit(&self, samples: Vec<Sample>) -> Result<(), CommitError> {
        self.enqueue(samples).await?.wait().await.map(|_| ())
    }

    /// Queues `samples` (waiting only if the queue is full) and returns a
    /// ticket that resolves once they are flushed, so an input can keep
    /// reading while earlier samples are being committed.
    pub async fn enqueue(&self, samples: Vec<Sample>) -> Result<Ticket, CommitError> {
        self.enqueue_records(samples.into_iter().map(Record::Sample).collect(), None)
            .await
    }

    /// Queues records with an optional idempotency key (unique per input:
    /// prefix it with the source); the ticket says whether they were stored
    /// or the key was seen before.
    pub async fn enqueue_records(
        &self,
        records: Vec<Record>,
        key: Option<Vec<u8>>,
    ) -> Result<Ticket, CommitError> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Pending { records, key, done })
            .await
            .map_err(|_| CommitError::Closed)?;
        Ok(Ticket(wait))
    }
}

/// Resolves when the records it was issued for are durable.
pub struct Ticket(oneshot::Receiver<Result<Stored, String>>);

impl Ticket {
    pub async fn wait(self) -> Result<Stored, CommitError> {
        self.0
            .await
            .map_err(|_| CommitError::Closed)?
            .map_err(CommitError::Buffer)
    }
}

async fn run(
    buffer: Arc<Buffer>,
    mut rx: mpsc::Receiver<Pending>,
    max_delay: Duration,
    max_samples: usize,
    seal_at: u64,
    full: Arc<Notify>,
) {
    while let Some(first) = rx.recv().await {
        let mut count = first.records.len();
        let mut group = vec![first];
        let deadline = tokio::time::Instant::now() + max_delay;
        while count < max_samples {
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
            let Some(p) = next else { break };
            count += p.records.len();
            group.push(p);
        }
        let result = store(&buffer, &group).await;
        match result {
            Ok(outcomes) => {
                for (p, outcome) in group.into_iter().zip(outcomes) {
                    let _ = p.done.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = count, "group commit failed; inputs will not be acknowledged");
                for p in group {
                    let _ = p.done.send(Err(e.clone()));
                }
            }
        }
        if buffer.unsealed() >= seal_at {
            full.notify_one();
        }
    }
}

/// Appends the group's records (skipping requests whose idempotency key was
/// stored before, or comes twice in the group) and flushes once.
async fn store(buffer: &Buffer, group: &[Pending]) -> Result<Vec<Stored>, String> {
    let mut outcomes = Vec::with_capacity(group.len());
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut all: Vec<Record> = Vec::new();
    for p in group {
        if let Some(key) = &p.key {
            if keys.contains(key) || buffer.seen(key).map_err(|e| e.to_string())? {
                outcomes.push(Stored::Duplicate);
                continue;
            }
            keys.push(key.clone());
        }
        all.extend(p.records.iter().cloned());
        outcomes.push(Stored::New);
    }
    buffer
        .append_records(&all, &keys)
        .map_err(|e| e.to_string())?;
    buffer.flush().await.map_err(|e| e.to_string())?;
    Ok(outcomes)
}
