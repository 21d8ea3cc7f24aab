//! causeway-xmpp: the pure XMPP layer of Causeway.
//!
//! Everything here is free of I/O and clocks: a small owned DOM ([`Element`]), an incremental
//! framer that turns untrusted bytes into stream events ([`Framer`]), stream headers and errors
//! (RFC 6120), server dialback keys and elements (XEP-0220, XEP-0185) and address validation.

#![warn(missing_docs)]

pub mod addr;
pub mod dialback;
pub mod element;
pub mod error;
pub mod framer;
pub mod negotiation;
pub mod ns;
pub mod stream;

mod chars;
mod limits;
mod parse;
mod scan;
mod xmltext;

pub use element::{escape_attr, escape_text, Element, Namespace, Node};
pub use error::{
    Fault, FrameError, OutboundFault, StanzaCondition, StanzaErrorType, StreamCondition,
};
pub use framer::{Event, Framer, TopLevel};
pub use limits::Limits;
pub use stream::StreamHeader;
