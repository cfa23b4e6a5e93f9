//! Damage a gateway's storage does to a sled buffer, drawn from a seed.
//!
//! Found by a property test over damaged copies of a multi-segment sled
//! database (each opened in a child process): one to eight flipped bits in
//! the log made sled 0.34 panic while opening in 18 of 20 trials ("tried to
//! serialize Uninitialized"), a segment written over another (a misdirected
//! write) in 20 of 20 ("duplicate segment LSN"), a truncation at a random
//! offset in 8 of 20. A small log of one or two segments rarely panics,
//! which is why a backlog of a few thousand readings never showed it.

use std::path::Path;

use crate::Rng;

/// sled's default segment size.
const SEGMENT: usize = 512 * 1024;

/// One kind of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// One to eight bits flipped anywhere in the log.
    FlipBits,
    /// The log cut at a random offset (a write lost at the end).
    Truncate,
    /// A run of 4 KiB blocks read back as zeros.
    ZeroBlocks,
    /// A run of blocks holding what they held earlier (lost writes).
    StaleBlocks,
    /// One segment written over another (a misdirected write).
    MisdirectedSegment,
    /// A few bits of sled's snapshot flipped.
    SnapshotBits,
    /// The snapshot gone and some bytes of the log overwritten.
    NoSnapshotAndGarbage,
}

impl Damage {
    pub const ALL: [Damage; 7] = [
        Damage::FlipBits,
        Damage::Truncate,
        Damage::ZeroBlocks,
        Damage::StaleBlocks,
        Damage::MisdirectedSegment,
        Damage::SnapshotBits,
        Damage::NoSnapshotAndGarbage,
    ];
}

/// Damages the sled database in `buffer`; `earlier` is a copy of the same
/// buffer taken before its last writes (the source of stale blocks).
/// Returns what was done, for the failure message.
pub fn apply(buffer: &Path, earlier: &Path, how: Damage, rng: &mut Rng) -> String {
    let db = buffer.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let len = bytes.len() as u64;
    let blocks = |rng: &mut Rng| {
        let at = rng.below(len / 4096 + 1) as usize * 4096;
        let n = 4096 * (1 + rng.below(64) as usize);
        (at, n)
    };
    let what = match how {
        Damage::FlipBits => {
            let n = 1 + rng.below(8);
            for _ in 0..n {
                let at = rng.below(len) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            format!("{n} bits flipped")
        }
        Damage::Truncate => {
            let at = rng.below(len) as usize;
            bytes.truncate(at);
            format!("cut at {at} of {len}")
        }
        Damage::ZeroBlocks => {
            let (at, n) = blocks(rng);
            bytes.iter_mut().skip(at).take(n).for_each(|b| *b = 0);
            format!("{n} bytes zeroed at {at}")
        }
        Damage::StaleBlocks => {
            let old = std::fs::read(earlier.join("db")).unwrap();
            let (at, n) = blocks(rng);
            let end = (at + n).min(old.len()).min(bytes.len());
            if at < end {
                bytes[at..end].copy_from_slice(&old[at..end]);
            }
            format!("{} stale bytes at {at}", end.saturating_sub(at))
        }
        Damage::MisdirectedSegment => {
            let segments = bytes.len() / SEGMENT;
            assert!(segments >= 2, "a buffer of {len} bytes has one segment");
            let from = rng.below(segments as u64) as usize;
            let to = (from + 1 + rng.below(segments as u64 - 1) as usize) % segments;
            let copy = bytes[from * SEGMENT..(from + 1) * SEGMENT].to_vec();
            bytes[to * SEGMENT..(to + 1) * SEGMENT].copy_from_slice(&copy);
            format!("segment {from} written over segment {to}")
        }
        Damage::SnapshotBits => {
            for snap in snapshots(buffer) {
                let mut s = std::fs::read(&snap).unwrap();
                for _ in 0..1 + rng.below(8) {
                    if !s.is_empty() {
                        let at = rng.below(s.len() as u64) as usize;
                        s[at] ^= 1 << rng.below(8);
                    }
                }
                std::fs::write(&snap, s).unwrap();
            }
            "snapshot bits flipped".to_owned()
        }
        Damage::NoSnapshotAndGarbage => {
            for snap in snapshots(buffer) {
                std::fs::remove_file(snap).unwrap();
            }
            let n = 1 + rng.below(64);
            for _ in 0..n {
                let at = rng.below(len) as usize;
                bytes[at] = rng.below(256) as u8;
            }
            format!("snapshot deleted, {n} bytes overwritten")
        }
    };
    std::fs::write(&db, bytes).unwrap();
    what
}

fn snapshots(buffer: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(buffer)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
        })
        .collect()
}

/// Copies the files of a buffer directory (sled keeps no subdirectories
/// but `blobs/`, which is copied too).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
