//! The boot agent (being built).
