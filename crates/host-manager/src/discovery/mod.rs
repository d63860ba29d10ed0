//! Finding hosts on the network: a TCP scan of configured ranges
//! ([`scan`]) and UDP multicast announce / response ([`multicast`]).
//! Registration (the third way) is an API call, in `grpc` and `http`.

pub mod multicast;
pub mod scan;
