//! The demo service (being built).
