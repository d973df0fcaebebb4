# Container images for clusters (docker/Dockerfile). REGISTRY is yours: ghcr.io/<org>, <account>.dkr.ecr...
REGISTRY ?= ghcr.io/YOUR_ORG
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE := $(REGISTRY)/cdkd-ray:$(VERSION)

.PHONY: image image-gpu push
image:
	docker build -f docker/Dockerfile -t $(IMAGE) .
image-gpu:
	docker build -f docker/Dockerfile --build-arg VARIANT=-gpu -t $(IMAGE)-gpu .
push: image image-gpu
	docker push $(IMAGE) && docker push $(IMAGE)-gpu
