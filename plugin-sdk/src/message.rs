//! The message as a plugin sees it.

use crate::value::{Headers, Value};

/// Standard message properties (times in milliseconds).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Properties {
    pub persistent: bool,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub content_type: Option<String>,
    pub priority: Option<u8>,
    pub expiration_ms: Option<u64>,
    pub timestamp: Option<u64>,
}

/// Where the body is: in the host until asked for (Wasm), or here (native tests).
#[derive(Debug, Clone, PartialEq)]
enum Body {
    Inline(Vec<u8>),
    #[cfg(target_arch = "wasm32")]
    Host {
        index: u32,
        size: u64,
    },
}

/// A message to route: routing key, headers, properties and (on request) the body.
///
/// Headers are only present when the plugin's capabilities say it reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    routing_key: String,
    headers: Headers,
    properties: Properties,
    body: Body,
}

impl Message {
    /// A message with `routing_key`, no headers, default properties and an empty body.
    pub fn new(routing_key: impl Into<String>) -> Self {
        Message {
            routing_key: routing_key.into(),
            headers: Headers::new(),
            properties: Properties::default(),
            body: Body::Inline(Vec::new()),
        }
    }

    /// Adds a header (builder style, for tests).
    pub fn with_header(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.headers.insert(name, value);
        self
    }

    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    pub fn with_properties(mut self, properties: Properties) -> Self {
        self.properties = properties;
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Inline(body.into());
        self
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn from_host(
        routing_key: String,
        headers: Headers,
        properties: Properties,
        index: u32,
        size: u64,
    ) -> Self {
        Message {
            routing_key,
            headers,
            properties,
            body: Body::Host { index, size },
        }
    }

    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&Value> {
        self.headers.get(name)
    }

    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    pub fn properties(&self) -> &Properties {
        &self.properties
    }

    /// The body's length in bytes, known without fetching it.
    pub fn body_size(&self) -> u64 {
        match &self.body {
            Body::Inline(bytes) => bytes.len() as u64,
            #[cfg(target_arch = "wasm32")]
            Body::Host { size, .. } => *size,
        }
    }

    /// What the broker hands a plugin with `capabilities`: for a key-only plugin the
    /// routing key alone (no headers, default properties, empty body); without
    /// `reads_headers`, no headers.
    pub(crate) fn as_handed(&self, capabilities: crate::Capabilities) -> Message {
        if capabilities.key_only {
            return Message::new(self.routing_key.clone());
        }
        let mut msg = self.clone();
        if !capabilities.reads_headers {
            msg.headers = Headers::new();
        }
        msg
    }

    /// The body. In Wasm this copies it from the host on every call, so call it once.
    pub fn body(&self) -> Vec<u8> {
        match &self.body {
            Body::Inline(bytes) => bytes.clone(),
            #[cfg(target_arch = "wasm32")]
            Body::Host { index, .. } => crate::__private::message_body(*index),
        }
    }
}
