"""Data layer: readers into one Note table (Parquet), text cleaning, pair mining, splits, demo corpus."""
