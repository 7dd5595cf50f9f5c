//! End-to-end tests of the broker core (filled in as the core lands).
