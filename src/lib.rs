//! fastbuild
