//! The MESSAGES value: when the message entered its queue, a checksum, the message.
//!
//! `[enqueued_at | CHECKSUMMED (u64 LE)][CRC-32 of all but itself (u32 LE)][encode_stored]`
//!
//! redb checks its pages' checksums when the store opens (`open_and_recover`), not on
//! every read: a body paged out and read back while the broker runs is checked here, so
//! a bit that flips on disk meanwhile is an error, never a changed message. Values written
//! before the checksum (the flag bit clear) are read as they are.

use std::sync::Arc;

use super::Recalled;
use crate::message::{Message, decode_placement, decode_stored, encode_stored};

/// Set in the enqueue time's top bit (ms since the epoch never reach it): a checksum
/// follows.
const CHECKSUMMED: u64 = 1 << 63;

/// A MESSAGES value for `message`, in `out`.
pub(super) fn encode_entry(enqueued_at: u64, message: &Message, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(enqueued_at | CHECKSUMMED).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    encode_stored(message, out);
    let sum = checksum(&out[..8], &out[12..]);
    out[8..12].copy_from_slice(&sum.to_le_bytes());
}

fn checksum(time: &[u8], stored: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(time);
    hasher.update(stored);
    hasher.finalize()
}

/// A MESSAGES value's enqueue time and stored message, its checksum verified.
fn split_entry(bytes: &[u8]) -> Result<(u64, &[u8]), String> {
    let (time_bytes, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or("stored entry shorter than its enqueue time")?;
    let time = u64::from_le_bytes(*time_bytes);
    if time & CHECKSUMMED == 0 {
        return Ok((time, rest));
    }
    let (sum, stored) = rest
        .split_first_chunk::<4>()
        .ok_or("stored entry shorter than its checksum")?;
    if checksum(time_bytes, stored) != u32::from_le_bytes(*sum) {
        return Err("checksum mismatch: the stored message is damaged".into());
    }
    Ok((time & !CHECKSUMMED, stored))
}

/// A MESSAGES value, whole or (`on_disk`) only its placement; a message with a delay is
/// always whole (it waits in memory).
pub(super) fn recall(bytes: &[u8], on_disk: bool) -> Result<(u64, Recalled), String> {
    let (time, stored) = split_entry(bytes)?;
    if on_disk {
        let placement = decode_placement(stored)?;
        if placement.delay_ms.is_none_or(|d| d == 0) {
            return Ok((time, Recalled::OnDisk(placement)));
        }
    }
    let message = Arc::new(decode_stored(stored)?);
    Ok((time, Recalled::InMemory(message)))
}

/// A MESSAGES value whole.
pub(super) fn decode_entry(bytes: &[u8]) -> Result<(u64, Message), String> {
    let (time, stored) = split_entry(bytes)?;
    Ok((time, decode_stored(stored)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_round_trips_and_a_flipped_bit_anywhere_is_an_error() {
        let message = Message::text("q", "a body of some length");
        let mut value = Vec::new();
        encode_entry(1_765_000_000_000, &message, &mut value);
        let (time, decoded) = decode_entry(&value).unwrap();
        assert_eq!(time, 1_765_000_000_000);
        assert_eq!(decoded.body, message.body);
        for at in 0..value.len() {
            let mut damaged = value.clone();
            damaged[at] ^= 0x20;
            assert!(
                decode_entry(&damaged).is_err(),
                "a flip at byte {at} is caught"
            );
            assert!(recall(&damaged, true).is_err(), "also when only placing it");
        }
    }

    #[test]
    fn entries_written_before_the_checksum_still_read() {
        let message = Message::text("q", "old");
        let mut value = 42u64.to_le_bytes().to_vec();
        encode_stored(&message, &mut value);
        let (time, decoded) = decode_entry(&value).unwrap();
        assert_eq!((time, &decoded.body[..]), (42, &b"old"[..]));
    }
}
