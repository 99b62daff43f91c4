"""Holding registrations: the registrar (one lease, a desired set) and `pilotfish register`."""
