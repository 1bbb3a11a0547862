//! This crate holds only tests (see `tests/`): checks over the image definitions.
