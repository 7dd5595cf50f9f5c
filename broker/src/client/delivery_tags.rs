//! Delivery tags as the application sees them. The broker numbers a connection's
//! deliveries from 1, so after a reconnect the same number names another message: the
//! client puts the connection's number (its generation, 0 for the first) in the tag's top
//! bits, and refuses to ack a tag from a connection that is gone
//! ([`ClientError::StaleDelivery`](super::ClientError::StaleDelivery)) instead of acking
//! whatever the new connection numbered the same. The first connection's tags are the
//! broker's unchanged.

/// Bits of the broker's own tag (a connection would need 2^40 deliveries to overflow).
const TAG_BITS: u32 = 40;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// The application's tag for the broker's `tag` on connection `generation`.
pub(super) fn for_app(generation: u64, tag: u64) -> u64 {
    (generation << TAG_BITS) | (tag & TAG_MASK)
}

/// The connection generation and broker tag of an application's tag.
pub(super) fn split(tag: u64) -> (u64, u64) {
    (tag >> TAG_BITS, tag & TAG_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_connection_tags_are_unchanged_and_later_ones_round_trip() {
        assert_eq!(for_app(0, 17), 17);
        assert_eq!(split(17), (0, 17));
        let tag = for_app(3, 17);
        assert_ne!(tag, 17);
        assert_eq!(split(tag), (3, 17));
    }
}
