//! Opening the buffer: counters rebuilt from disk, the mark checked, and a
//! buffer sled cannot open (or panics on) moved aside.

use super::*;

/// sled's page cache: enough for the hot tail of the buffer.
pub(super) const CACHE_BYTES: u64 = 8 * 1024 * 1024;

impl Buffer {
    /// Opens (or creates) the buffer in `dir`.
    pub fn open(dir: &Path) -> Result<Buffer, BufferError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(1000))
            // sled caches up to 1 GB of pages by default; a gateway has far less to spare.
            .cache_capacity(CACHE_BYTES)
            .open()?;
        let samples = db.open_tree("samples")?;
        let transactions = db.open_tree("transactions")?;
        let outbox = db.open_tree("outbox")?;
        let batches = db.open_tree("batches")?;
        let meta = db.open_tree("meta")?;
        let idempotency = db.open_tree("idempotency")?;
        let sessions = db.open_tree("sessions")?;
        let pending = db.open_tree("pending")?;
        let quarantine = db.open_tree("quarantine")?;
        upgrade(&db, &samples, &outbox, &batches, &meta)?;
        let incarnation = match meta.get("incarnation")? {
            Some(v) => read_u64(&v)?,
            None => {
                let fresh: u64 = rand::random();
                meta.insert("incarnation", &be(fresh))?;
                meta.insert("next_seq", &be(1))?;
                db.flush()?;
                tracing::info!(incarnation = fresh, "new buffer created");
                fresh
            }
        };
        let counts = match meta.get("counts")? {
            Some(v) => postcard::from_bytes(&v).unwrap_or_else(|e| {
                tracing::error!(error = %e, "the buffer's drop and reject counts are unreadable; they start again from 0");
                Counts::default()
            }),
            None => Counts::default(),
        };
        // Ids stay unique: past every chunk's records and every pending sample.
        let (mut next_id, mut unsealed, mut bytes) = (0u64, 0u64, [0u64; 3]);
        for (class, tree) in Class::ALL.into_iter().zip([&samples, &transactions]) {
            if let Some((k, v)) = tree.last()? {
                next_id = next_id.max(read_u64(&k)? + u64::from(chunk_len(&v)));
            }
            for item in tree.iter() {
                let (k, v) = item?;
                unsealed += chunk_records(&v);
                bytes[class.index()] += entry_bytes(&k, &v);
            }
        }
        let mut pending_count = 0u64;
        for item in pending.iter() {
            let (k, v) = item?;
            if k.len() == 16 {
                next_id = next_id.max(read_u64(&k[8..])? + 1);
            }
            pending_count += 1;
            bytes[PENDING] += entry_bytes(&k, &v);
        }
        let mut outbox_records = 0;
        for item in batches.iter() {
            let (k, v) = item?;
            // An unreadable info costs the batch its checksum, not the buffer.
            let info = batch_info(&v).unwrap_or_else(|e| {
                tracing::error!(error = %e, "unreadable batch info; the batch is sent unchecked");
                BatchInfo {
                    class: Class::Telemetry,
                    records: 0,
                    bytes: entry_bytes(&k, &outbox.get(&k).ok().flatten().unwrap_or_default()),
                    oldest: 0,
                    crc: 0,
                }
            });
            bytes[info.class.index()] += info.bytes;
            outbox_records += info.records;
        }
        // Everything recovered from disk is durable.
        let durable_seq = match outbox.last()? {
            Some((k, _)) => read_u64(&k)?,
            None => 0,
        };
        let log = std::fs::File::open(dir.join("db"))?;
        let buffer = Buffer {
            db,
            log,
            samples,
            transactions,
            outbox,
            batches,
            meta,
            idempotency,
            sessions,
            pending,
            quarantine,
            rules: Vec::new(),
            budget: Budget::default(),
            stream: StreamId {
                name: TELEMETRY.into(),
                incarnation,
            },
            limits: Limits::default(),
            next_id: AtomicU64::new(next_id),
            unsealed: AtomicU64::new(unsealed),
            pending_count: AtomicU64::new(pending_count),
            outbox_records: AtomicU64::new(outbox_records),
            mark: mark_path(dir),
            bytes: bytes.map(AtomicU64::new),
            removed: AtomicU64::new(0),
            removing: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
            mark_state: Mutex::new(Mark::default()),
            in_flight: Mutex::new(std::collections::BTreeSet::new()),
            counts: Mutex::new(counts),
            writer: Mutex::new(()),
            durable_seq: AtomicU64::new(durable_seq),
            recreated: AtomicBool::new(false),
            fault: Mutex::new(None),
            damage: Mutex::new(None),
            broken: AtomicBool::new(false),
            corrupted: AtomicBool::new(false),
            ghosts: Mutex::new((0, std::collections::BTreeSet::new())),
        };
        buffer.check_mark()?;
        // Everything just opened is on disk: the mark starts from it.
        let snapshot = buffer.mark_snapshot();
        buffer.write_mark_after_flush(snapshot);
        Ok(buffer)
    }

    /// Opens the buffer in `dir`; if it is corrupt beyond opening, moves it
    /// aside (to `dir` + `.corrupt-` + Unix seconds, kept for inspection)
    /// with an ERROR log and starts a fresh one, so a damaged disk never
    /// keeps the agent in a crash loop. Returns where the old one went.
    /// Other errors (a lock held by another running agent, permissions) are
    /// returned as they are.
    ///
    /// sled panics on some damage instead of returning an error (a flipped
    /// bit, a misdirected write; see `tests/src/damage.rs`): such a panic
    /// while opening counts as corruption. `recovery` says what the last
    /// runs showed (see [`Recovery`]).
    pub fn open_or_recover(
        dir: &Path,
        recovery: Recovery,
    ) -> Result<(Buffer, Option<std::path::PathBuf>), BufferError> {
        let read_back = match recovery {
            Recovery::MoveAside(why) if dir.exists() => {
                return Self::move_aside(dir, &BufferError::Corrupt(why));
            }
            Recovery::MoveAside(_) | Recovery::Open => false,
            Recovery::ReadBack => true,
        };
        let opened = dash_runtime::panics::catch(|| {
            let buffer = Buffer::open(dir)?;
            if read_back {
                buffer.read_everything()?;
            }
            Ok(buffer)
        })
        .unwrap_or_else(|panic| {
            Err(BufferError::Corrupt(format!(
                "sled panicked while opening: {panic}"
            )))
        });
        match opened {
            Ok(b) => Ok((b, None)),
            Err(
                e @ (BufferError::Corrupt(_)
                | BufferError::Sled(sled::Error::Corruption { .. })
                | BufferError::Sled(sled::Error::Unsupported(_))
                | BufferError::Sled(sled::Error::ReportableBug(_))),
            ) => Self::move_aside(dir, &e),
            // A missing or truncated file of sled's own surfaces as an IO
            // error of kind NotFound or UnexpectedEof.
            Err(BufferError::Io(e) | BufferError::Sled(sled::Error::Io(e)))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::InvalidData
                ) && dir.exists() =>
            {
                Self::move_aside(dir, &BufferError::Io(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads every key and value of every tree (after a run that sled
    /// ended by a panic).
    pub(super) fn read_everything(&self) -> Result<u64, BufferError> {
        let mut bytes = 0u64;
        for name in self.db.tree_names() {
            for item in self.db.open_tree(&name)?.iter() {
                let (k, v) = item?;
                bytes += entry_bytes(&k, &v);
            }
        }
        tracing::info!(
            bytes,
            "every record of the buffer read back after a panic in sled"
        );
        Ok(bytes)
    }

    pub(super) fn move_aside(
        dir: &Path,
        e: &BufferError,
    ) -> Result<(Buffer, Option<std::path::PathBuf>), BufferError> {
        let secs = dash_shared::now_micros() / 1_000_000;
        let mut aside = dir.as_os_str().to_owned();
        aside.push(format!(".corrupt-{secs}"));
        let aside = std::path::PathBuf::from(aside);
        std::fs::rename(dir, &aside)?;
        let abandoned = Mark::read(&mark_path(&aside)).map_or(0, |m| m.held);
        tracing::error!(
            records = abandoned,
            error = %e,
            moved_to = %aside.display(),
            "the buffer could not be opened and was moved aside; starting a fresh one (records in it were not sent)"
        );
        let fresh = Buffer::open(dir)?;
        fresh.recreated.store(true, Ordering::SeqCst);
        if abandoned > 0 {
            // What the old buffer held (by its mark) was never sent.
            fresh.count_corrupt_at_start(abandoned)?;
        }
        Ok((fresh, Some(aside)))
    }
}
