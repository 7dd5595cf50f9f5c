//! What the handle remembers of each connection's commands across queue shards (with more
//! than one): whether it is in confirm mode, and which shards have had commands from it
//! since its last confirmed publish. A confirm promises that everything the connection
//! sent before it is stored (with one shard, turns and commits keep its order); with
//! several, a confirmed publish to some shards also waits for the next commit of each
//! other shard its earlier commands went to (a sync part, see `shard_routing.rs`), so an
//! ack followed by a confirmed publish is known stored by that confirm, as with one.
//! It also keeps each connection's [`ConnLink`], to find the shard a delivery tag is from.

use std::sync::{Arc, Mutex};

use super::conn::ConnLink;
use crate::fast_map::FastMap;
use crate::queue::ConnId;

/// Connections' records in this many maps, each under its own lock (by connection id):
/// every publish and ack looks its connection up, from whichever shard thread runs it,
/// and one lock for all would serialize them on a machine with many.
const STRIPES: usize = 64;

pub(super) struct ConnSends {
    conns: Box<[Mutex<FastMap<ConnId, Sends>>]>,
}

impl Default for ConnSends {
    fn default() -> Self {
        ConnSends {
            conns: (0..STRIPES).map(|_| Mutex::default()).collect(),
        }
    }
}

#[derive(Debug, Default)]
struct Sends {
    link: Arc<ConnLink>,
    confirms: bool,
    /// Shards (a bit each) with commands since its last confirmed publish.
    dirty: u64,
}

/// What sending one command changes.
#[derive(Debug, Clone)]
pub(super) enum Sent {
    Nothing,
    Opened(ConnId, Arc<ConnLink>),
    Closed(ConnId),
    ConfirmMode(ConnId),
    /// A command to these shards.
    Touched(ConnId, u64),
    /// A publish to these shards (its confirm covers what the connection sent before).
    Published(ConnId, u64),
    /// A consume from a queue of this shard.
    Consumed(ConnId, usize),
}

impl ConnSends {
    /// The map holding `conn`'s record, locked.
    fn lock(&self, conn: ConnId) -> std::sync::MutexGuard<'_, FastMap<ConnId, Sends>> {
        let stripe = &self.conns[conn as usize % STRIPES];
        stripe.lock().expect("connection sends poisoned")
    }

    /// The shards besides `shards` whose earlier commands from `conn` a publish's confirm
    /// must wait for.
    pub fn pending_besides(&self, conn: ConnId, shards: u64) -> u64 {
        let conns = self.lock(conn);
        match conns.get(&conn) {
            Some(sends) if sends.confirms => sends.dirty & !shards,
            _ => 0,
        }
    }

    /// The shards besides `shard` that `conn` sent commands to since its last confirmed
    /// publish (or ever, without confirms).
    pub fn touched_besides(&self, conn: ConnId, shard: usize) -> u64 {
        let conns = self.lock(conn);
        conns
            .get(&conn)
            .map_or(0, |sends| sends.dirty & !(1 << shard))
    }

    /// The shard that delivered `tag` to `conn` (`None`: unknown, ask every shard).
    pub fn shard_of_tag(&self, conn: ConnId, tag: u64) -> Option<usize> {
        let conns = self.lock(conn);
        conns.get(&conn)?.link.shard_of_tag(tag)
    }

    /// Records a command sent.
    pub fn sent(&self, sent: Sent) {
        let conn = match &sent {
            Sent::Nothing => return,
            Sent::Opened(conn, _)
            | Sent::Closed(conn)
            | Sent::ConfirmMode(conn)
            | Sent::Touched(conn, _)
            | Sent::Published(conn, _)
            | Sent::Consumed(conn, _) => *conn,
        };
        let mut conns = self.lock(conn);
        match sent {
            Sent::Nothing => {}
            Sent::Opened(conn, link) => {
                let sends = Sends {
                    link,
                    ..Default::default()
                };
                conns.insert(conn, sends);
            }
            Sent::Closed(conn) => {
                conns.remove(&conn);
            }
            Sent::ConfirmMode(conn) => {
                if let Some(sends) = conns.get_mut(&conn) {
                    sends.confirms = true;
                }
            }
            Sent::Touched(conn, shards) => {
                if let Some(sends) = conns.get_mut(&conn) {
                    sends.dirty |= shards;
                }
            }
            Sent::Published(conn, shards) => {
                if let Some(sends) = conns.get_mut(&conn) {
                    sends.dirty = shards;
                    if let (Some(place), 1) = (&sends.link.place, shards.count_ones()) {
                        place.publishes_to(shards.trailing_zeros() as usize);
                    }
                }
            }
            Sent::Consumed(conn, shard) => {
                if let Some(sends) = conns.get_mut(&conn) {
                    sends.dirty |= 1 << shard;
                    if let Some(place) = &sends.link.place {
                        place.consumes_on(shard);
                    }
                }
            }
        }
    }
}

/// The bit of each shard in `mask`, as indexes.
pub(super) fn shards_in(mask: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |shard| mask & (1 << shard) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmed_publish_waits_for_the_other_shards_its_connection_used_since_the_last() {
        let sends = ConnSends::default();
        sends.sent(Sent::Opened(7, Default::default()));
        sends.sent(Sent::Touched(7, 0b0010));
        assert_eq!(sends.pending_besides(7, 0b0100), 0, "not in confirm mode");
        sends.sent(Sent::ConfirmMode(7));
        sends.sent(Sent::Touched(7, 0b0001));
        assert_eq!(sends.pending_besides(7, 0b0100), 0b0011);
        assert_eq!(sends.pending_besides(7, 0b0010), 0b0001);
        sends.sent(Sent::Published(7, 0b0100));
        assert_eq!(sends.pending_besides(7, 0b0100), 0);
        assert_eq!(sends.pending_besides(7, 0b1000), 0b0100);
        sends.sent(Sent::Closed(7));
        assert_eq!(sends.pending_besides(7, 0), 0);
        assert_eq!(shards_in(0b1010).collect::<Vec<_>>(), [1, 3]);
    }
}
