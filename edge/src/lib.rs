//! The edge role: the engine in front of clients, choosing a shield for each
//! miss by rendezvous hash (or the origin when there is no shield), failing
//! over between shields and reporting health and load.
