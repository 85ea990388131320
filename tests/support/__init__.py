"""Test support: real-protocol fakes and harnesses for the parts that cannot run here for real."""
