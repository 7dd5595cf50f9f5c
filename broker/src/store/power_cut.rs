//! A simulated disk that can lose power, for durability tests (not used in production:
//! the broker reaches it only through the hidden [`crate::Config::storage_backend`]).
//!
//! A `kill -9` cannot catch a missing or misplaced fsync, because the page cache outlives
//! the process. This disk keeps every write in a volatile layer until `sync_data`; losing
//! power drops whatever was not synced (optionally tearing the write in flight, or
//! keeping a random part of the unsynced writes, as a disk's write-back order allows),
//! and every later I/O fails, so the broker that was running cannot touch the durable
//! image any more. A new broker then opens [`PowerCutDisk::image`] through a fresh disk.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// redb's page size: the unit of a "one page of it persisted" tear.
const PAGE: usize = 4096;

/// When the power goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutAt {
    /// During the `n`th I/O operation (write, set_len or sync_data; counted from 0).
    Op(u64),
    /// During the `n`th `sync_data` (counted from 0): what it was syncing may be partly on
    /// disk.
    Sync(u64),
    /// During the `n`th `set_len` that grows the file (counted from 0).
    Growth(u64),
}

/// What of the unsynced writes survives the cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Nothing unsynced survives.
    DropAll,
    /// Only part of the last unsynced write survives: a prefix of it, or one of its pages.
    TearLast,
    /// Each unsynced write survives or not at random (in any order, as write-back
    /// allows); the last one may be torn.
    Scramble,
}

/// One change not yet synced.
#[derive(Debug, Clone)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug)]
struct Disk {
    /// What survives a power cut.
    durable: Vec<u8>,
    /// What reads see: `durable` with `unsynced` applied.
    current: Vec<u8>,
    unsynced: Vec<Unsynced>,
    ops: u64,
    syncs: u64,
    growths: u64,
    cut_at: Option<CutAt>,
    tear: Tear,
    rng: fastrand::Rng,
    /// The power is off: every I/O fails.
    lost: bool,
}

/// Counts of what a disk has been asked to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Writes, length changes and syncs.
    pub ops: u64,
    pub syncs: u64,
    pub growths: u64,
    /// The power was lost.
    pub lost: bool,
}

/// A disk that loses power on cue; cheap to clone (clones share the disk).
#[derive(Debug, Clone)]
pub struct PowerCutDisk {
    disk: Arc<Mutex<Disk>>,
}

impl PowerCutDisk {
    /// An empty disk.
    pub fn new(seed: u64) -> Self {
        Self::from_image(Vec::new(), seed)
    }

    /// A disk holding `image` (the durable image of an earlier disk), powered on.
    pub fn from_image(image: Vec<u8>, seed: u64) -> Self {
        let disk = Disk {
            current: image.clone(),
            durable: image,
            unsynced: Vec::new(),
            ops: 0,
            syncs: 0,
            growths: 0,
            cut_at: None,
            tear: Tear::DropAll,
            rng: fastrand::Rng::with_seed(seed),
            lost: false,
        };
        PowerCutDisk {
            disk: Arc::new(Mutex::new(disk)),
        }
    }

    /// Loses power during the operation `at` names, keeping what `tear` says.
    pub fn schedule_cut(&self, at: CutAt, tear: Tear) {
        let mut disk = self.lock();
        disk.cut_at = Some(at);
        disk.tear = tear;
    }

    /// Loses power now (no write in flight: `tear` applies to the last unsynced one).
    pub fn cut_now(&self, tear: Tear) {
        let mut disk = self.lock();
        disk.tear = tear;
        disk.lose_power(None);
    }

    /// What survives a power cut now (after one: what survived it).
    pub fn image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    pub fn stats(&self) -> DiskStats {
        let disk = self.lock();
        DiskStats {
            ops: disk.ops,
            syncs: disk.syncs,
            growths: disk.growths,
            lost: disk.lost,
        }
    }

    /// A redb storage backend on this disk (redb owns it; the disk outlives it).
    pub fn backend(&self) -> PowerCutBackend {
        PowerCutBackend { disk: self.clone() }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A panic while holding the lock leaves a consistent disk (every change is
        // applied whole under it).
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn power_lost() -> io::Error {
    io::Error::other("power lost (simulated power cut)")
}

impl Disk {
    /// Counts an operation; loses power instead when it is the scheduled one.
    fn begin(&mut self, kind: OpKind, in_flight: Option<Unsynced>) -> io::Result<()> {
        if self.lost {
            return Err(power_lost());
        }
        let hit = match self.cut_at {
            Some(CutAt::Op(n)) => n == self.ops,
            Some(CutAt::Sync(n)) => kind == OpKind::Sync && n == self.syncs,
            Some(CutAt::Growth(n)) => kind == OpKind::Growth && n == self.growths,
            None => false,
        };
        self.ops += 1;
        match kind {
            OpKind::Sync => self.syncs += 1,
            OpKind::Growth => self.growths += 1,
            OpKind::Other => {}
        }
        if hit {
            self.lose_power(in_flight);
            return Err(power_lost());
        }
        Ok(())
    }

    /// Applies the cut: keeps what the tear mode says of the unsynced changes (and of
    /// `in_flight`, the change the power went during), then refuses all I/O.
    fn lose_power(&mut self, in_flight: Option<Unsynced>) {
        let mut unsynced = std::mem::take(&mut self.unsynced);
        unsynced.extend(in_flight);
        let last = unsynced.len().checked_sub(1);
        for (i, change) in unsynced.into_iter().enumerate() {
            let is_last = Some(i) == last;
            let kept = match self.tear {
                Tear::DropAll => None,
                Tear::TearLast => is_last.then(|| self.torn(change)),
                Tear::Scramble if self.rng.bool() => match is_last && self.rng.bool() {
                    true => Some(self.torn(change)),
                    false => Some(change),
                },
                Tear::Scramble => None,
            };
            if let Some(change) = kept {
                apply(&mut self.durable, &change);
            }
        }
        self.current = Vec::new();
        self.lost = true;
    }

    /// Part of a change: a prefix of a write, or one page of it (a length change is
    /// atomic).
    fn torn(&mut self, change: Unsynced) -> Unsynced {
        let Unsynced::Write { offset, data } = change else {
            return change;
        };
        if data.len() > PAGE && self.rng.bool() {
            let pages = data.len().div_ceil(PAGE);
            let start = self.rng.usize(..pages) * PAGE;
            let end = (start + PAGE).min(data.len());
            return Unsynced::Write {
                offset: offset + start as u64,
                data: data[start..end].to_vec(),
            };
        }
        let keep = self.rng.usize(..=data.len());
        Unsynced::Write {
            offset,
            data: data[..keep].to_vec(),
        }
    }

    fn change(&mut self, kind: OpKind, change: Unsynced) -> io::Result<()> {
        self.begin(kind, Some(change.clone()))?;
        apply(&mut self.current, &change);
        self.unsynced.push(change);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Sync,
    Growth,
    Other,
}

fn apply(image: &mut Vec<u8>, change: &Unsynced) {
    match change {
        Unsynced::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
        Unsynced::SetLen(len) => image.resize(*len as usize, 0),
    }
}

/// The [`redb::StorageBackend`] of a [`PowerCutDisk`].
#[derive(Debug)]
pub struct PowerCutBackend {
    disk: PowerCutDisk,
}

impl redb::StorageBackend for PowerCutBackend {
    fn len(&self) -> io::Result<u64> {
        let disk = self.disk.lock();
        if disk.lost {
            return Err(power_lost());
        }
        Ok(disk.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let disk = self.disk.lock();
        if disk.lost {
            return Err(power_lost());
        }
        let start = offset as usize;
        let bytes = disk
            .current
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock();
        let kind = match len > disk.current.len() as u64 {
            true => OpKind::Growth,
            false => OpKind::Other,
        };
        disk.change(kind, Unsynced::SetLen(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.begin(OpKind::Sync, None)?;
        let disk = &mut *disk;
        for change in disk.unsynced.drain(..) {
            apply(&mut disk.durable, &change);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.disk.lock().change(
            OpKind::Other,
            Unsynced::Write {
                offset,
                data: data.to_vec(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend as _;

    #[test]
    fn only_synced_writes_survive_a_cut() {
        let disk = PowerCutDisk::new(1);
        let backend = disk.backend();
        backend.write(0, b"synced").unwrap();
        backend.sync_data().unwrap();
        backend.write(0, b"SYNCED, then lost").unwrap();
        let mut read = [0; 6];
        backend.read(0, &mut read).unwrap();
        assert_eq!(&read, b"SYNCED", "reads see unsynced writes");
        disk.cut_now(Tear::DropAll);
        assert_eq!(disk.image(), b"synced");
        assert!(backend.write(0, b"x").is_err(), "no I/O after the cut");
        assert!(backend.read(0, &mut read).is_err());
    }

    #[test]
    fn a_scheduled_cut_fails_that_operation_and_tears_it() {
        let disk = PowerCutDisk::new(7);
        let backend = disk.backend();
        disk.schedule_cut(CutAt::Op(2), Tear::TearLast);
        backend.set_len(8).unwrap();
        backend.sync_data().unwrap();
        let data = vec![0xAB; 3 * PAGE];
        assert!(backend.write(0, &data).is_err());
        let image = disk.image();
        assert!(disk.stats().lost);
        // A prefix of the write, or one of its pages, over the synced 8 zero bytes.
        let written = image.iter().filter(|b| **b == 0xAB).count();
        assert!(written <= PAGE || image.iter().take_while(|b| **b == 0xAB).count() == written);
        assert!(image.len() >= 8);
    }

    #[test]
    fn a_cut_during_growth_keeps_the_old_length() {
        let disk = PowerCutDisk::new(3);
        let backend = disk.backend();
        backend.set_len(4096).unwrap();
        backend.sync_data().unwrap();
        disk.schedule_cut(CutAt::Growth(1), Tear::DropAll);
        assert!(backend.set_len(8192).is_err());
        assert_eq!(disk.image().len(), 4096);
    }
}
