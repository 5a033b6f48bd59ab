//! fleetup-server: the coordinator. (Being built: see the coordinator issue.)
