//! AMQP reply codes: the one table from the core's error codes to AMQP's, and the two
//! kinds of exception (a channel's, which closes the channel; a connection's, which
//! closes the connection).

use crate::protocol::ErrorCode;

/// AMQP 0-9-1 reply codes the front end sends.
pub mod code {
    pub const NO_ROUTE: u16 = 312;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// The AMQP reply code (and its name, which RabbitMQ puts first in the reply text) for
/// a core error code.
pub fn reply_code(error: ErrorCode) -> (u16, &'static str) {
    use ErrorCode as E;
    match error {
        E::QueueNotFound
        | E::ExchangeNotFound
        | E::PluginNotFound
        | E::UserNotFound
        | E::VhostNotFound => (code::NOT_FOUND, "NOT_FOUND"),
        E::AccessRefused => (code::ACCESS_REFUSED, "ACCESS_REFUSED"),
        E::ResourceLocked => (code::RESOURCE_LOCKED, "RESOURCE_LOCKED"),
        E::PreconditionFailed
        | E::UnknownDeliveryTag
        | E::InvalidField
        | E::InvalidBinding
        | E::QueueFull
        | E::InvalidPlugin => (code::PRECONDITION_FAILED, "PRECONDITION_FAILED"),
        // RabbitMQ: an unknown exchange type is a connection-level COMMAND_INVALID; here
        // it closes the channel only (the connection's other channels are not at fault).
        E::UnknownExchangeType => (code::COMMAND_INVALID, "COMMAND_INVALID"),
        E::UnknownConsumer | E::ConsumerTagInUse => (code::NOT_ALLOWED, "NOT_ALLOWED"),
        E::Unroutable => (code::NO_ROUTE, "NO_ROUTE"),
        E::ExchangeUnavailable | E::PluginError | E::StoreError => {
            (code::INTERNAL_ERROR, "INTERNAL_ERROR")
        }
        E::MalformedJson
        | E::UnknownOp
        | E::FrameTooLarge
        | E::UnsupportedFrame
        | E::MalformedBinary => (code::SYNTAX_ERROR, "SYNTAX_ERROR"),
    }
}

/// What ends a channel or the connection, with the method that caused it (class and
/// method ids, 0 when no method did).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AmqpError {
    /// Closes the channel (`channel.close`); the connection goes on.
    #[error("channel exception {code}: {text}")]
    Channel {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    /// Closes the connection (`connection.close`).
    #[error("connection exception {code}: {text}")]
    Connection {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
}

impl AmqpError {
    pub fn channel(code: u16, name: &str, text: impl std::fmt::Display) -> Self {
        AmqpError::Channel {
            code,
            text: format!("{name} - {text}"),
            class_id: 0,
            method_id: 0,
        }
    }

    pub fn connection(code: u16, name: &str, text: impl std::fmt::Display) -> Self {
        AmqpError::Connection {
            code,
            text: format!("{name} - {text}"),
            class_id: 0,
            method_id: 0,
        }
    }

    /// The channel exception answering a core error.
    pub fn from_core(error: ErrorCode, message: &str) -> Self {
        let (code, name) = reply_code(error);
        Self::channel(code, name, message)
    }

    /// Names the method that caused it.
    pub fn during(mut self, class: u16, method: u16) -> Self {
        match &mut self {
            AmqpError::Channel {
                class_id,
                method_id,
                ..
            }
            | AmqpError::Connection {
                class_id,
                method_id,
                ..
            } => {
                (*class_id, *method_id) = (class, method);
            }
        }
        self
    }

    /// The reply code.
    pub fn code(&self) -> u16 {
        match self {
            AmqpError::Channel { code, .. } | AmqpError::Connection { code, .. } => *code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_map_to_rabbitmq_codes() {
        assert_eq!(reply_code(ErrorCode::AccessRefused).0, 403);
        assert_eq!(reply_code(ErrorCode::QueueNotFound).0, 404);
        assert_eq!(reply_code(ErrorCode::ExchangeNotFound).0, 404);
        assert_eq!(reply_code(ErrorCode::ResourceLocked).0, 405);
        assert_eq!(reply_code(ErrorCode::PreconditionFailed).0, 406);
        assert_eq!(reply_code(ErrorCode::UnknownDeliveryTag).0, 406);
        let e = AmqpError::from_core(ErrorCode::QueueNotFound, "no queue `q`").during(50, 10);
        assert_eq!(
            e,
            AmqpError::Channel {
                code: 404,
                text: "NOT_FOUND - no queue `q`".into(),
                class_id: 50,
                method_id: 10
            }
        );
    }
}
