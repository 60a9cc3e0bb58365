"""Devices: MMIO/PIO handlers, IRQ lines, properties, a QOM path, reset and (later) VMState."""
