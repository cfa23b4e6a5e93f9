//! Batches as the suites and benches feed them to the ingest: the stream,
//! the encoded payload, and a group of deliveries.

use dash_aggregator::ingest::Delivery;
use dash_shared::wire::{self, Limits};
use dash_shared::{AgentId, Batch, Message, SeriesBlock, StreamId, TenantId};

/// The stream named `telemetry` with `incarnation`.
pub fn stream(incarnation: u64) -> StreamId {
    StreamId {
        name: "telemetry".into(),
        incarnation,
    }
}

/// `batch` encoded as a message with the default limits.
pub fn encode(batch: &Batch) -> Vec<u8> {
    wire::encode(&Message::Batch(batch.clone()), &Limits::default()).unwrap()
}

/// A samples-only batch `seq` of `stream(1)` with floor 1, encoded.
pub fn payload(seq: u64, series: Vec<SeriesBlock>) -> Vec<u8> {
    encode(&Batch::samples(stream(1), seq, 1, series))
}

/// [`payload`] with `events` too.
pub fn payload_with_events(
    seq: u64,
    series: Vec<SeriesBlock>,
    events: Vec<dash_shared::Event>,
) -> Vec<u8> {
    let mut b = Batch::samples(stream(1), seq, 1, series);
    b.events = events;
    encode(&b)
}

/// A `sale` event of `source` at `time` (µs).
pub fn sale(source: &str, time: i64) -> dash_shared::Event {
    dash_shared::Event {
        source: source.into(),
        time,
        kind: "sale".into(),
        body: format!(r#"{{"till": "{source}", "amount": 12.5}}"#),
    }
}

/// One delivery from `tenant`'s `agent` per payload, in order.
pub fn deliveries<'a>(
    tenant: &'a TenantId,
    agent: &'a AgentId,
    payloads: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Delivery<'a>> {
    payloads
        .into_iter()
        .map(|payload| Delivery {
            tenant,
            agent,
            payload,
        })
        .collect()
}
