//! What an AMQP connection does with each client frame. Nearly every frame is handled
//! without waiting (a publish with credit to spare, an ack, a method answered at once):
//! [`AmqpConnection::on_frame_now`]. Only what must wait (publish credit, room in the
//! router's channel, a change of routing, opening or closing a channel, a channel
//! exception) goes on in [`AmqpConnection::finish`], which its caller boxes: the
//! connection task's future then stays small, where moving large nested futures for
//! every frame had been most of memmove's 14 % of the broker's CPU on this path.

use amq_protocol::protocol::{AMQPClass, channel};
use tokio::sync::OwnedSemaphorePermit;

use super::channel::Channel;
use super::connection::{AmqpConnection, Ended, RouterFrames};
use super::errors::AmqpError;
use super::frames::Incoming;
use super::methods::{self, Effect};
use crate::protocol::{Request, ServerFrame};
use crate::queue::ConnId;
use crate::router::{Command, Outbound};

/// What a client frame still needs once its synchronous part is done.
pub(super) enum Pending {
    OpenChannel(u16),
    CloseChannel(u16),
    /// A channel exception to raise.
    Raise(u16, AmqpError),
    /// An effect that may wait, or one of the rare kinds (see [`AmqpConnection::apply`]).
    Apply(u16, Effect),
    /// A command for the router that must wait: its channel is full, or it changes
    /// routing.
    Send(Command),
}

impl AmqpConnection {
    /// Handles `frame` as far as it can without waiting; what is left is for
    /// [`Self::finish`].
    pub(super) fn on_frame_now(&mut self, frame: Incoming) -> Result<Option<Pending>, Ended> {
        let (number, effect) = match frame {
            Incoming::Heartbeat => return Ok(None),
            Incoming::Method(0, class) => return self.on_connection_method(*class).map(|()| None),
            Incoming::Method(number, class) => match *class {
                AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                    return Ok(Some(Pending::OpenChannel(number)));
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    return Ok(Some(Pending::CloseChannel(number)));
                }
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                    if self.channels.get(&number).is_some_and(|c| c.closing) {
                        self.channels.remove(&number);
                    }
                    return Ok(None);
                }
                class => {
                    let ids = (class.get_amqp_class_id(), class.get_amqp_method_id());
                    let Some(channel) = self.channel_for_method(number, ids)? else {
                        return Ok(None);
                    };
                    (number, methods::on_method(channel, class))
                }
            },
            Incoming::Hot(number, method) => {
                let Some(channel) = self.channel_for_method(number, method.ids())? else {
                    return Ok(None);
                };
                (number, methods::on_hot_method(channel, method))
            }
            Incoming::Header(number, header) => {
                let (max_body, user) = (self.ctx.max_body, self.principal.user.clone());
                let Some(channel) = self.open_channel_mut(number).map_err(Ended::Raised)? else {
                    return Ok(None);
                };
                (
                    number,
                    methods::on_header(channel, *header, max_body, &user),
                )
            }
            Incoming::Body(number, body) => {
                let user = self.principal.user.clone();
                let Some(channel) = self.open_channel_mut(number).map_err(Ended::Raised)? else {
                    return Ok(None);
                };
                (number, methods::on_body(channel, body, &user))
            }
        };
        match effect {
            Err(e) => Ok(Some(Pending::Raise(number, e))),
            Ok(effect) => self.try_apply(number, effect),
        }
    }

    /// The open channel a method (class and method ids) is for; `None` while it closes; a
    /// connection exception naming the method when it is not open.
    fn channel_for_method(
        &mut self,
        number: u16,
        (class_id, method_id): (u16, u16),
    ) -> Result<Option<&mut Channel>, Ended> {
        self.open_channel_mut(number)
            .map_err(|e| Ended::Raised(e.during(class_id, method_id)))
    }

    /// Finishes what [`Self::on_frame_now`] left.
    pub(super) async fn finish(
        &mut self,
        pending: Pending,
        router_frames: &mut RouterFrames,
    ) -> Result<(), Ended> {
        match pending {
            Pending::OpenChannel(number) => self.open_channel(number).await,
            Pending::CloseChannel(number) => self.close_channel(number).await,
            Pending::Raise(number, e) => self.raise(number, e).await,
            Pending::Apply(number, effect) => self.apply(number, effect, router_frames).await,
            Pending::Send(command) => self.send_command(command).await,
        }
    }

    /// The common effects without waiting: a reply, a request (an ack, say), a publish
    /// with credit to spare. Anything else is left for [`Self::apply`].
    fn try_apply(&mut self, number: u16, effect: Effect) -> Result<Option<Pending>, Ended> {
        let conn = self.channels[&number].conn;
        let (mut request, credit) = match effect {
            Effect::None => return Ok(None),
            Effect::Reply(reply) => {
                self.send(number, reply);
                return Ok(None);
            }
            Effect::Request(request) => (request, None),
            Effect::Publish(request) => {
                self.published = true;
                match self.credit.clone().try_acquire_owned() {
                    Ok(permit) => (request, Some(permit)),
                    Err(_) => return Ok(Some(Pending::Apply(number, Effect::Publish(request)))),
                }
            }
            other => return Ok(Some(Pending::Apply(number, other))),
        };
        if let Some(refusal) = self.refusal(&mut request) {
            let raised = self.on_router_frame(number, conn, Outbound::Frame(refusal))?;
            return Ok(raised.map(|(number, e)| Pending::Raise(number, e)));
        }
        let command = Command::Request {
            conn,
            request,
            credit,
            routed: None,
        };
        match self.ctx.router.try_send_request(command) {
            Ok(true) => Ok(None),
            Ok(false) => Err(Ended::BrokerStopping),
            Err(command) => Ok(Some(Pending::Send(command))),
        }
    }

    /// The user's permission for `request` (which may rewrite it), or the error frame the
    /// channel gets instead, as if the router had refused it.
    fn refusal(&self, request: &mut Request) -> Option<ServerFrame> {
        let admitted = self.ctx.auth.admit(
            &self.principal,
            &self.vhost,
            self.peer.ip(),
            &mut request.op,
            &self.grants,
        );
        admitted
            .err()
            .map(|(code, message)| ServerFrame::error(Some(request.id.clone()), code, message))
    }

    /// Every effect, waiting where it must (for publish credit, for the router).
    async fn apply(
        &mut self,
        number: u16,
        effect: Effect,
        router_frames: &mut RouterFrames,
    ) -> Result<(), Ended> {
        let conn = self.channels[&number].conn;
        let (mut request, credit, reply) = match effect {
            Effect::None => return Ok(()),
            Effect::Reply(reply) => {
                self.send(number, reply);
                return Ok(());
            }
            Effect::ChannelPrefetch(prefetch, reply) => {
                self.send_command(Command::ChannelPrefetch { conn, prefetch })
                    .await?;
                self.send(number, reply);
                return Ok(());
            }
            Effect::BrokerRequests(requests) => {
                for mut request in requests {
                    // Names the broker chose cannot fail to qualify.
                    if crate::vhost::qualify_op(&self.vhost, &mut request.op).is_ok() {
                        self.request(conn, request, None).await?;
                    }
                }
                return Ok(());
            }
            Effect::Commit(held) => {
                for effect in held {
                    if self.channels.get(&number).is_none_or(|ch| ch.closing) {
                        return Ok(());
                    }
                    Box::pin(self.apply(number, effect, router_frames)).await?;
                }
                // Nothing held to wait for (or all of it answered already): `commit-ok` now.
                let done = self.channels.get_mut(&number).and_then(|ch| ch.tx.as_mut());
                if let Some(commit_ok) = done.and_then(|tx| tx.commit_done()) {
                    self.send(number, commit_ok);
                }
                return Ok(());
            }
            Effect::Request(request) => (request, None, None),
            Effect::RequestThenReply(request, reply) => (request, None, Some(reply)),
            Effect::Publish(request) => {
                self.published = true;
                let credit = self.publish_credit(router_frames).await?;
                (request, Some(credit), None)
            }
        };
        if let Some(refusal) = self.refusal(&mut request) {
            if let Some((number, e)) =
                self.on_router_frame(number, conn, Outbound::Frame(refusal))?
            {
                self.raise(number, e).await?;
            }
            return Ok(());
        }
        self.request(conn, request, credit).await?;
        if let Some(reply) = reply {
            self.send(number, reply);
        }
        Ok(())
    }

    async fn request(
        &self,
        conn: ConnId,
        request: Request,
        credit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), Ended> {
        self.send_command(Command::Request {
            conn,
            request,
            credit,
            routed: None,
        })
        .await
    }

    async fn send_command(&self, command: Command) -> Result<(), Ended> {
        match self.ctx.router.send_request(command).await {
            true => Ok(()),
            false => Err(Ended::BrokerStopping),
        }
    }

    /// A unit of publish credit; while there is none, router frames (the confirms that
    /// give credit back) keep being written.
    async fn publish_credit(
        &mut self,
        router_frames: &mut RouterFrames,
    ) -> Result<OwnedSemaphorePermit, Ended> {
        loop {
            if let Ok(permit) = self.credit.clone().try_acquire_owned() {
                return Ok(permit);
            }
            tokio::select! {
                permit = self.credit.clone().acquire_owned() => {
                    return Ok(permit.expect("the semaphore is never closed"));
                }
                Some((number, conn, outbound)) = router_frames.recv() => {
                    if let Some((number, e)) = self.on_router_frame(number, conn, outbound)? {
                        self.raise(number, e).await?;
                    }
                }
                _ = self.shutdown.changed() => return Err(Ended::BrokerStopping),
            }
        }
    }
}
