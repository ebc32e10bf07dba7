//! Where updates come from: `POST /v1/publish` bodies ([`publish`]) and the
//! built-in demo feed ([`demo`]). Every source ends in `Hub::publish` through
//! the same body parser, so a demo row and a published row are the same thing.

pub mod backoff;
pub mod demo;
pub mod event_stream;
pub mod health;
pub mod mapping;
pub mod publish;
