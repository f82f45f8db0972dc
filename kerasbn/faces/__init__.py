"""Faces in whole photos: detection (the mtcnn package), the five-landmark template and the
similarity transform that aligns a face to it."""
