"""The dataset contract: the layer vocabulary, Arrow schemas, reading and writing, validation and inspection."""
