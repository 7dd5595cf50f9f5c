//! The channels of an AMQP connection: opening one (a router connection of its own, with
//! its router frames tagged by the connection's sender), closing one (by the client, or by a channel
//! exception the broker raises), and closing them all when the connection ends.

use amq_protocol::protocol::{AMQPClass, channel};

use super::channel::Channel;
use super::connection::{AmqpConnection, Ended};
use super::errors::{AmqpError, code};
use super::handshake::short;
use crate::protocol::WireProtocol;
use crate::queue::ConnId;
use crate::router::Command;

impl AmqpConnection {
    /// A channel exception closes its channel; a connection exception ends the connection.
    pub(super) async fn raise(&mut self, number: u16, e: AmqpError) -> Result<(), Ended> {
        let AmqpError::Channel {
            code,
            text,
            class_id,
            method_id,
        } = &e
        else {
            return Err(Ended::Raised(e));
        };
        let Some(channel) = self.channels.get_mut(&number) else {
            return Ok(());
        };
        tracing::debug!(conn = self.id, channel = number, error = %e, "AMQP channel exception");
        channel.closing = true;
        channel.content = None;
        let conn = channel.conn;
        let close = channel::Close {
            reply_code: *code,
            reply_text: short(text),
            class_id: *class_id,
            method_id: *method_id,
        };
        self.send(
            number,
            AMQPClass::Channel(channel::AMQPMethod::Close(close)),
        );
        // Its consumers, unacked deliveries and exclusive queues go now.
        self.router_close(conn, false).await
    }

    pub(super) async fn router_close(
        &self,
        conn: ConnId,
        broker_stopping: bool,
    ) -> Result<(), Ended> {
        match self
            .ctx
            .router
            .send_request(Command::Close {
                conn,
                broker_stopping,
            })
            .await
        {
            true => Ok(()),
            false => Err(Ended::BrokerStopping),
        }
    }

    /// The channel a frame is for: `None` while it is closing (the frame is dropped); a
    /// connection exception when it is not open.
    pub(super) fn open_channel_mut(
        &mut self,
        number: u16,
    ) -> Result<Option<&mut Channel>, AmqpError> {
        match self.channels.get_mut(&number) {
            Some(channel) if channel.closing => Ok(None),
            Some(channel) => Ok(Some(channel)),
            None => Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                "CHANNEL_ERROR",
                format_args!("channel {number} is not open"),
            )),
        }
    }

    pub(super) async fn open_channel(&mut self, number: u16) -> Result<(), Ended> {
        if self.channels.contains_key(&number) || number > self.channel_max {
            return Err(Ended::Raised(
                AmqpError::connection(
                    code::CHANNEL_ERROR,
                    "CHANNEL_ERROR",
                    format_args!(
                        "channel {number} is already open or above channel_max {}",
                        self.channel_max
                    ),
                )
                .during(20, 10),
            ));
        }
        let conn = self.ctx.conn_ids.next();
        let channel = Channel::new(number, conn);
        // The router writes on the connection's channel, tagged with this channel.
        let tx = self.router_tx.for_channel(number, conn);
        let open = Command::Open(crate::router::OpenConn {
            conn,
            tx,
            peer: Some(self.peer),
            outbound: Some(channel.outbound.clone()),
            user: Some(self.principal.clone()),
            vhost: self.vhost.clone(),
            session: Some(self.id),
            protocol: WireProtocol::Amqp,
            link: crate::router::ConnLink::of_this_task(),
        });
        if !self.ctx.router.send_request(open).await {
            return Err(Ended::BrokerStopping);
        }
        self.channels.insert(number, channel);
        self.send(
            number,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        );
        Ok(())
    }

    pub(super) async fn close_channel(&mut self, number: u16) -> Result<(), Ended> {
        if let Some(channel) = self.channels.remove(&number)
            && !channel.closing
        {
            self.router_close(channel.conn, false).await?;
        }
        self.send(
            number,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        );
        Ok(())
    }

    /// The router forgets every channel still open.
    pub(super) async fn close_channels(&mut self, broker_stopping: bool) {
        for (_, channel) in self.channels.drain() {
            if !channel.closing {
                let close = Command::Close {
                    conn: channel.conn,
                    broker_stopping,
                };
                self.ctx.router.send_request(close).await;
            }
        }
    }
}
