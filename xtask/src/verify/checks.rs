//! The checks, one module per component. Each returns report rows; none panics or stops
//! the others, so one run shows everything that is wrong.

pub mod app;
pub mod grafana;
pub mod logs;
pub mod panels;
pub mod prometheus;
