//! A STOMP session's subscriptions: SUBSCRIBE and UNSUBSCRIBE by destination, ACK and
//! NACK by ack mode, and the reply queues behind `/temp-queue/` destinations.

use super::{Ended, Session, receipt_answer};
use crate::protocol::{DeclareQueue, Op, Subscribe};
use crate::stomp::destinations::{Declaration, REPLY_QUEUE_PREFIX, random_suffix, subscribe_plan};
use crate::stomp::frame::{ClientCommand, Frame, Version};
use crate::stomp::headers::parse_ack_id;
use crate::stomp::queue_properties::QueueProperties;
use crate::stomp::writer::Answer;

/// How a subscription's deliveries are settled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum AckMode {
    /// The broker settles each delivery once written.
    Auto,
    /// An ACK settles that delivery and every earlier one of the connection.
    Client,
    ClientIndividual,
}

pub(super) struct Subscription {
    pub ack: AckMode,
    pub queue: String,
    pub durable_queue: bool,
}

impl Session {
    pub(super) async fn subscribe(
        &mut self,
        frame: &Frame,
        receipt: Option<&str>,
    ) -> Result<(), Ended> {
        let destination = self.destination(frame, receipt)?;
        let text = frame.header("destination").unwrap_or_default().to_string();
        // STOMP 1.0 subscriptions may leave the id out: the destination stands for it.
        let id = match (frame.header("id"), self.version) {
            (Some(id), _) if !id.is_empty() => id.to_string(),
            (_, Version::V1_0) => text.clone(),
            _ => return Err(self.refuse("SUBSCRIBE needs an `id` header".into(), receipt)),
        };
        if self.subscriptions.contains_key(&id) {
            return Err(self.refuse(format!("subscription `{id}` exists already"), receipt));
        }
        let ack = match frame.header("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => {
                let message =
                    format!("ack mode `{other}` is not one of auto, client, client-individual");
                return Err(self.refuse(message, receipt));
            }
        };
        let prefetch = match frame.header("prefetch-count") {
            None => crate::protocol::DEFAULT_PREFETCH,
            Some(text) => text.parse().map_err(|_| {
                self.refuse(format!("prefetch-count `{text}` is not a number"), receipt)
            })?,
        };
        let mut properties = QueueProperties::of(frame).map_err(|e| self.refuse(e, receipt))?;
        // `persistent:true` asks for a durable subscription too (RabbitMQ's older name).
        if frame.header("persistent") == Some("true") {
            properties.durable = Some(true);
        }
        let plan = subscribe_plan(
            &destination,
            &text,
            &id,
            frame.header("x-queue-name"),
            &properties,
        )
        .map_err(|e| self.refuse(e.to_string(), receipt))?;
        for declaration in plan.declarations {
            // A subscription's own queue is declared anew each time (it is new).
            if let Declaration::Required(op @ Op::DeclareQueue(_)) = &declaration
                && plan.bind.is_some()
            {
                self.request_or_refuse(op.clone(), Answer::Nothing, receipt)
                    .await?;
                continue;
            }
            self.declare(declaration, receipt).await?;
        }
        if let Some(binding) = plan.bind {
            self.request_or_refuse(Op::Bind(binding), Answer::Nothing, receipt)
                .await?;
        }
        let subscribe = Op::Subscribe(Subscribe {
            queue: plan.queue.clone(),
            prefetch,
            auto_ack: ack == AckMode::Auto,
            consumer_tag: Some(id.clone()),
            filter: None,
            exclusive: false,
            priority: 0,
            consumer_timeout_ms: None,
        });
        self.request_or_refuse(subscribe, receipt_answer(receipt), receipt)
            .await?;
        let subscription = Subscription {
            ack,
            queue: plan.queue,
            durable_queue: plan.durable_queue,
        };
        self.subscriptions.insert(id, subscription);
        Ok(())
    }

    pub(super) async fn unsubscribe(
        &mut self,
        frame: &Frame,
        receipt: Option<&str>,
    ) -> Result<(), Ended> {
        let id = match (frame.header("id"), self.version) {
            (Some(id), _) => id.to_string(),
            (None, Version::V1_0) => self.required(frame, "destination", receipt)?.to_string(),
            (None, _) => {
                return Err(self.refuse("UNSUBSCRIBE needs an `id` header".into(), receipt));
            }
        };
        let Some(subscription) = self.subscriptions.remove(&id) else {
            return Err(self.refuse(format!("no subscription `{id}`"), receipt));
        };
        let cancel = Op::Cancel { consumer_tag: id };
        if subscription.durable_queue && frame.header("durable") == Some("true") {
            self.request(cancel, Answer::Nothing).await?;
            let delete = Op::DeleteQueue {
                queue: subscription.queue,
                if_unused: false,
                if_empty: false,
            };
            return self
                .request_or_refuse(delete, receipt_answer(receipt), receipt)
                .await;
        }
        self.request(cancel, receipt_answer(receipt)).await
    }

    /// ACK or NACK: `id` (1.2) or `message-id` (1.0, 1.1) is the delivery's ack id; in a
    /// `client` subscription it settles the earlier deliveries too.
    pub(super) async fn settle(
        &mut self,
        frame: &Frame,
        receipt: Option<&str>,
    ) -> Result<(), Ended> {
        let header = match self.version {
            Version::V1_2 => "id",
            _ => "message-id",
        };
        let ack_id = self.required(frame, header, receipt)?;
        let Some((subscription, delivery_tag)) = parse_ack_id(ack_id) else {
            let message = format!("`{ack_id}` is not the ack id of a MESSAGE of this connection");
            return Err(self.refuse(message, receipt));
        };
        let multiple = self
            .subscriptions
            .get(subscription)
            .is_some_and(|s| s.ack == AckMode::Client);
        let op = match frame.command {
            ClientCommand::Ack => Op::Ack {
                delivery_tag,
                multiple,
            },
            _ => Op::Nack {
                delivery_tag,
                multiple,
                requeue: frame.header("requeue") != Some("false"),
                delay_ms: None,
            },
        };
        self.request(op, Answer::Nothing).await
    }

    /// The reply queue behind `/temp-queue/NAME`: declared (exclusive) and consumed by
    /// this connection on first use, its deliveries marked with subscription `reply_to`.
    pub(super) async fn temp_queue(
        &mut self,
        name: &str,
        reply_to: &str,
        receipt: Option<&str>,
    ) -> Result<String, Ended> {
        if let Some(queue) = self.temp_queues.get(name) {
            return Ok(queue.clone());
        }
        let queue = format!("{REPLY_QUEUE_PREFIX}{}", random_suffix());
        let declare = Op::DeclareQueue(DeclareQueue {
            queue: queue.clone(),
            durable: false,
            exclusive: true,
            auto_delete: false,
            arguments: Default::default(),
        });
        self.request_or_refuse(declare, Answer::Nothing, receipt)
            .await?;
        let subscribe = Op::Subscribe(Subscribe {
            queue: queue.clone(),
            prefetch: 0,
            auto_ack: true,
            consumer_tag: Some(reply_to.to_string()),
            filter: None,
            exclusive: false,
            priority: 0,
            consumer_timeout_ms: None,
        });
        self.request_or_refuse(subscribe, Answer::Nothing, receipt)
            .await?;
        self.temp_queues.insert(name.to_string(), queue.clone());
        Ok(queue)
    }
}
