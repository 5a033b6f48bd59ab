//! Install engine integration tests: each runs on a temporary root made from
//! examples/base-1.0 with the demo service really running under the exec backend.

mod support;

mod beneath;
mod cancel;
mod crash;
mod crl;
mod diskfull;
mod entries;
mod failures;
mod happy;
mod hooks;
mod inuse;
mod lock;
mod mini;
mod pack;
mod prompt;
mod signals;
mod versions;
