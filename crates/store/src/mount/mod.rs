//! FUSE client (filled in below).
